"""The options that choose snapshots, restic's `--host`, `--path` and `--tag`, shared by the commands
that list or restore them, and the parsing of the times that choose events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import click

from capsule.domain.errors import CapsuleError


def filter_options(fn: Callable[..., None]) -> Callable[..., None]:
    """restic's `--host`, `--path` and `--tag`, each repeatable."""
    fn = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="TAG[,TAG]",
        help="Only snapshots with all of these tags (repeatable: any of the groups).",
    )(fn)
    fn = click.option(
        "--path",
        "paths",
        multiple=True,
        help="Only snapshots of this database or folder (repeatable: any of them).",
    )(fn)
    return click.option(
        "--host", "hosts", multiple=True, help="Only snapshots taken on this machine (repeatable)."
    )(fn)


def since(text: str | None) -> datetime | None:
    """A `--since` value: a date or a time, in local time (as the human output shows times) unless
    it says its zone (as `--json` writes them, with `Z`)."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as e:
        raise CapsuleError(
            f"--since {text!r} is not a date or time; write it like 2026-11-25 or 2026-11-25T14:30"
        ) from e
    return parsed if parsed.tzinfo else parsed.astimezone()
