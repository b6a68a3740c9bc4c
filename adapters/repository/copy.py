"""Copy a repository's objects from one store to another, so that the copy is a complete repository
at every instant.

Safe to run twice, or after a run that died half-way: an object the destination already lists is
not sent again, and every object is written whole (the storage contract's atomic `write`), so a run
that stops leaves objects that are complete or absent, never cut short.

The order keeps the copy usable while it grows: `config` and `keys` first (nothing can be read
without them), then the packs, then the index files that name them, then the snapshots that need
both. Locks are never copied (they belong to the processes of one store), nor packs a repair set
aside.

The names are listed in the reverse order (snapshots first, packs last): a backup writes its packs,
then its index file, then its snapshot, so every snapshot listed has its index files and packs
listed after it, even while a backup runs beside the copy.

Nothing is deleted here: deletions on a destination follow the event log's rule
(capsule.orchestrator.uploads).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field

from capsule.adapters.errors import RepositoryError
from capsule.adapters.repository.backends.storage import Backend, Kind
from capsule.domain.errors import Category

ORDER: tuple[Kind, ...] = ("config", "keys", "data", "index", "snapshots")
CONTENT_NAMED: frozenset[Kind] = frozenset(("data", "index", "snapshots"))
"""Kinds whose objects are named by the SHA-256 of their bytes."""

Progress = Callable[[int, int], None]


class CopyRefused(RepositoryError):
    """Raised when an object read from the source does not match its name or the destination
    stored another length than was sent: damage that must not reach the copy."""

    category = Category.DAMAGED


@dataclass
class CopyCounts:
    """What one copy did: objects and bytes sent, and those the destination already had."""

    sent: int = 0
    sent_bytes: int = 0
    skipped: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    """Objects sent, per kind."""


def _names(backend: Backend, kind: Kind) -> set[str]:
    if kind == "config":
        return {"config"} if backend.exists("config", "config") else set()
    return set(backend.list(kind))


def copy_repository(
    source: Backend,
    destination: Backend,
    *,
    on_sent: Callable[[Kind, str, int], None] | None = None,
    progress: Progress | None = None,
    have: Mapping[Kind, Set[str]] | None = None,
) -> CopyCounts:
    """Send to `destination` every object of `source` it lacks, in the order the module names.

    `have`: what the destination holds, as the caller knows it (the event log's record of it), so
    that nothing is listed there; by default every kind is listed.

    A content-named object is read whole and its SHA-256 checked against its name before it is sent
    (a pack damaged on the local disk is refused, not spread); after each write the destination's
    stored length is compared with what was sent. `on_sent(kind, name, size)` hears each object sent.
    """
    wanted = {kind: _names(source, kind) for kind in reversed(ORDER)}
    counts = CopyCounts()
    missing: list[tuple[Kind, str]] = []
    for kind in ORDER:
        there = set(have.get(kind, ())) if have is not None else _names(destination, kind)
        counts.skipped += len(wanted[kind] & there)
        missing += [(kind, name) for name in sorted(wanted[kind] - there)]
    for done, (kind, name) in enumerate(missing):
        data = source.read(kind, name)
        if kind in CONTENT_NAMED and hashlib.sha256(data).hexdigest() != name:
            raise CopyRefused(
                f"the {kind} object {name[:12]} of {source.describe()} does not match its name: it is "
                "damaged there, and was not copied; run `capsule verify` and `capsule repair` on it first"
            )
        destination.write(kind, name, data)
        stored = destination.size(kind, name)
        if stored != len(data):
            raise CopyRefused(
                f"{destination.describe()} stored {stored} bytes of the {kind} object {name[:12]}, "
                f"not the {len(data)} sent; check the destination, then run the command again"
            )
        counts.sent += 1
        counts.sent_bytes += len(data)
        counts.by_kind[kind] = counts.by_kind.get(kind, 0) + 1
        if on_sent is not None:
            on_sent(kind, name, len(data))
        if progress is not None:
            progress(done + 1, len(missing))
    return counts
