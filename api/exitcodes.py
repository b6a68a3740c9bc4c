"""The one table that turns what went wrong (an error's category) into the CLI's exit code.

Only the front doors in `api/` know these numbers; the layers below raise errors that carry a
`Category`, and events record the category. The HTTP API will add its status to each row here.
The exit-code lists of README.md, docs/backup-restore-guide.md and `capsule --help` are tested
against `EXIT_CODES.meanings`: change one, change the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from capsule.domain.errors import Category


@dataclass(frozen=True)
class ExitCodes:
    """Every code a `capsule` command ends with, and which category of error ends it with which."""

    by_category: Mapping[Category, int]
    meanings: Mapping[int, str]
    """Each code's first words in the documented lists."""
    ok: int = 0
    usage: int = 2
    """The CLI's own: an unknown option, a missing argument, an invalid setting."""
    interrupted: int = 130
    """The CLI's own: Ctrl-C (128 + SIGINT, as shells report it)."""
    warnings: int = 3
    """A backup that made its snapshot but left out or kept from before some items (restic's 3,
    "some source files could not be read"). Shared with damage found: a backup that ends with 3
    printed its snapshot on stdout; one that met damage printed only its one-line error."""
    attention: int = 5
    """`capsule status --check` found something wrong: a kind overdue, a last backup or drill failed."""


EXIT_CODES = ExitCodes(
    by_category=MappingProxyType(
        {
            Category.NOT_FOUND: 1,
            Category.DAMAGED: 3,
            Category.LOCKED: 4,
            Category.INVALID_INPUT: 1,
            Category.INVALID_SETTING: 2,
            Category.UNAVAILABLE: 1,
            Category.REFUSED: 1,
            Category.UNKNOWN: 1,
        }
    ),
    meanings=MappingProxyType(
        {
            0: "ok",
            1: "failed",
            2: "usage",
            3: "damage found, or a backup completed with warnings",
            4: "locked",
            5: "attention needed",
            130: "interrupted",
        }
    ),
)


def exit_code(category: Category) -> int:
    """The exit code of a command that failed with an error of `category`."""
    return EXIT_CODES.by_category[category]
