"""What a prune decides and what each of its phases returns: plain data, JSON both ways.

The job that runs a prune (see prune.py) keeps these in its events, so that each phase can run in
a new process from what the earlier ones returned. A plan's size grows with the packs and the
snapshots, never with the blobs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

DEFAULT_REPACK_UNUSED_PERCENT = 10
"""A pack whose unused share (of its stored bytes) passes this percentage is repacked."""


@dataclass(frozen=True)
class PruneTotals:
    packs: int = 0
    pack_bytes: int = 0
    """Bytes of every pack in the repository."""
    used_bytes: int = 0
    """Stored bytes of the blobs the snapshots use (a bundle counts whole if one member is used)."""
    unused_bytes: int = 0
    reclaim_bytes: int = 0
    """What deleting and repacking frees, about (a repacked pack's used blobs are written again)."""
    used_blobs: int = 0
    missing_blobs: int = 0
    """Blobs a snapshot names that no pack on disk holds (verify reports them; prune leaves them)."""
    young_packs: int = 0
    """Packs left alone for their age, that would otherwise be deleted or repacked."""
    unindexed_packs: int = 0


@dataclass(frozen=True)
class PrunePlan:
    """What a prune will do, decided from the snapshots and index files it read."""

    created: float
    repack_unused_percent: int
    snapshots: tuple[str, ...]
    index_files: tuple[str, ...]
    superseded: tuple[str, ...]
    """Those of `index_files` already superseded (their records were not read)."""
    delete: tuple[str, ...]
    repack: tuple[str, ...]
    totals: PruneTotals = field(default_factory=PruneTotals)

    @cached_property
    def condemned(self) -> frozenset[str]:
        """The packs that leave the index and are deleted (unless a new snapshot rescues one);
        made once (a repack asks it of every pack the index names)."""
        return frozenset(self.delete) | frozenset(self.repack)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> PrunePlan:
        d = json.loads(data) if isinstance(data, str) else dict(data)
        return cls(
            created=float(d["created"]),
            repack_unused_percent=int(d["repack_unused_percent"]),
            snapshots=tuple(d["snapshots"]),
            index_files=tuple(d["index_files"]),
            superseded=tuple(d["superseded"]),
            delete=tuple(d["delete"]),
            repack=tuple(d["repack"]),
            totals=PruneTotals(**d.get("totals", {})),
        )


@dataclass(frozen=True)
class Repacked:
    """The packs a repack wrote and the one index file that names them (None if nothing to copy)."""

    packs: tuple[str, ...] = ()
    index_file: str | None = None
    blobs: int = 0
    bytes_written: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Repacked:
        d = json.loads(data) if isinstance(data, str) else dict(data)
        return cls(tuple(d["packs"]), d["index_file"], int(d["blobs"]), int(d["bytes_written"]))


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...] = ()
    freed_bytes: int = 0
    rescued: tuple[str, ...] = ()
    """Condemned packs kept because a snapshot written during the prune needs them."""
    new_snapshots: int = 0
    temporary_files_removed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> PruneResult:
        d = json.loads(data) if isinstance(data, str) else dict(data)
        return cls(
            tuple(d["deleted"]),
            int(d["freed_bytes"]),
            tuple(d["rescued"]),
            int(d["new_snapshots"]),
            int(d["temporary_files_removed"]),
        )
