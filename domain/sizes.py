"""Sizes as people write them: "20M", "1.5G", "512K" or a plain count of bytes."""

from __future__ import annotations

DEFAULT_PACK_SIZE = 32 << 20
"""Target pack size of a new repository; an existing one keeps the size its config records. Two
requests carry a pack to Google Drive, so 32 MiB packs cost 64 requests per GiB (docs/destinations.md)."""

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Parse "20M", "1G", "1.5G", "512K" or a plain byte count (binary multiples).

    Raises ValueError for anything else: a negative, infinite or not-a-number value included.
    """
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:].isalpha() else ""
    number = cleaned[: len(cleaned) - len(unit)]
    if unit not in _UNITS or not number:
        raise ValueError(f"not a size: {text!r}")
    try:
        size = int(float(number) * _UNITS[unit])
    except (OverflowError, ValueError) as e:  # "inf" and "nan": float() takes them, int() does not
        raise ValueError(f"not a size: {text!r}") from e
    if size < 0:
        raise ValueError(f"not a size: {text!r}")
    return size


NO_LIMIT = ("off", "none", "0")


def parse_rate(text: str) -> int | None:
    """Parse a rate in bytes a second: a size as `parse_size` reads it, optionally followed by
    "/s"; None for "off", "none" or "0" (no limit). Raises ValueError for anything else."""
    cleaned = text.strip().lower()
    if cleaned in NO_LIMIT:
        return None
    size = parse_size(cleaned.removesuffix("/s"))
    if size == 0:
        return None
    return size
