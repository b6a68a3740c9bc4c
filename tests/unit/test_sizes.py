"""Sizes as people write them, for `capsule demo create --size` and the benchmarks' --size."""

from __future__ import annotations

import pytest

from capsule.domain.sizes import parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20M", 20 << 20),
        ("1.5G", 3 << 29),
        ("512K", 512 << 10),
        ("4096", 4096),
        ("2MiB", 2 << 20),
        ("1 g", 1 << 30),
    ],
)
def test_a_size_reads_with_binary_multiples(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "lots", "20X", "infM", "inf", "nanG", "-5M"])
def test_anything_else_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2MiB/s", 2 << 20),
        ("512KiB/s", 512 << 10),
        ("1.5M/s", 3 << 19),
        ("64K", 64 << 10),
        ("off", None),
        ("0", None),
    ],
)
def test_a_rate_reads_in_bytes_a_second_and_off_is_no_limit(text: str, expected: int | None) -> None:
    from capsule.domain.sizes import parse_rate

    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "-1M/s", "2MiB/h", ""])
def test_anything_else_is_not_a_rate(text: str) -> None:
    from capsule.domain.sizes import parse_rate

    with pytest.raises(ValueError, match="not a size"):
        parse_rate(text)
