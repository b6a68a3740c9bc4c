"""Use case: restore a snapshot, verified, into a folder or into the live database, as a job.

The job records the snapshot itself, resolved here once: `latest` must not change between its
attempts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsule.adapters.source_identity import live_database_identity
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.manifest import Manifest
from capsule.domain.sources import other_source, schema_changed
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.snapshots import ChooseSnapshots, configured_sources, resolve_snapshot
from capsule.orchestrator.usecases.source import open_source

Progress = Callable[[int, int], None]


class OtherSource(CapsuleError):
    """Raised when an in-place restore would put a snapshot of another source in the live database."""

    category = Category.REFUSED


class IncludeNeedsFiles(CapsuleError):
    """Raised when --include would pick files of a snapshot that holds a database."""

    category = Category.INVALID_INPUT


def check_in_place_source(
    settings: Settings, sid: str, manifest: Manifest, *, from_other_source: bool = False
) -> list[str]:
    """Refuse to put a snapshot of another source into the live database unless the owner says it
    is meant; return what the owner should hear even so (the schema changed since the snapshot).

    Nothing is written: this runs before anything is staged.
    """
    live = live_database_identity(settings.database)
    snapshot = manifest.source_identity()
    reason = other_source(snapshot, live)
    notes = []
    if reason is not None:
        if not from_other_source:
            raise OtherSource(
                f"refusing to restore snapshot {sid[:12]} into {live.path}: {reason}; nothing was "
                "changed (restore it with --to DIR to look at it, or add --from-other-source if it "
                "is meant to replace this database)"
            )
        notes.append(f"snapshot {sid[:12]} is of another source, as --from-other-source allowed: {reason}")
    elif schema_changed(snapshot, live):
        notes.append(
            f"the schema of snapshot {sid[:12]} differs from the live database's: the shop's program "
            "may have been upgraded since it was taken; check that the program works with the restored data"
        )
    return notes


@dataclass(frozen=True)
class Restore:
    """Restore `snapshot` (`latest-database`, `latest-files`, `latest`, an id or a unique prefix)
    into the folder `to`, or, with `to` None, into the live database (CAPSULE_DATABASE)."""

    snapshot: str
    to: Path | None = None
    force: bool = False
    check_database: bool = False
    include: tuple[str, ...] = ()
    from_other_source: bool = False
    special_bits: bool = False
    choice: ChooseSnapshots = field(default_factory=ChooseSnapshots)
    source: str | None = None
    """A copy to restore from: a destination's name or a folder's path; None: the local repository."""
    actor: str | None = None
    """Who asks; None: the person at this machine's terminal."""


@dataclass(frozen=True)
class RestoredFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Restored:
    """What a restore job did, as its last step recorded it."""

    job_id: str
    snapshot_id: str
    in_place: bool
    kind: str | None = None
    """`files` for a snapshot of images restored into a folder; None otherwise."""
    target: str | None = None
    files: int | None = None
    dirs: int | None = None
    symlinks: int | None = None
    bytes: int | None = None
    already_there: int | None = None
    special_bits_cleared: int | None = None
    restored: list[RestoredFile] = field(default_factory=list)
    """The database's files restored into a folder, each verified."""
    database: str | None = None
    safety_copy: str | None = None
    notes: list[str] = field(default_factory=list)


def restore_snapshot(settings: Settings, request: Restore, progress: Progress | None = None) -> Restored:
    from capsule.domain.restore_job import IN_PLACE, RestoreJob  # noqa: PLC0415 - the job runner loads slowly
    from capsule.orchestrator.jobrunner import run_job  # noqa: PLC0415
    from capsule.orchestrator.runtime import person  # noqa: PLC0415

    sid, manifest = resolve_snapshot(
        open_source(settings, request.source),
        request.snapshot,
        sources=None if request.from_other_source else configured_sources(settings),
        only=request.choice.snapshot_filter(),
    )
    if request.include and manifest.kind != "files":
        raise IncludeNeedsFiles(f"snapshot {sid[:12]} holds a database; --include picks files of images")
    in_place = request.to is None
    target = IN_PLACE if request.to is None else str(request.to.resolve())
    loaded = run_job(
        settings,
        "restore",
        lambda rt: rt.request_restore(
            snapshot_id=sid,
            target=target,
            force=request.force,
            check=request.check_database,
            include=request.include,
            from_other_source=request.from_other_source,
            special_bits=request.special_bits,
            source=request.source,
            actor=request.actor or person(),
        ),
        progress=progress,
    )
    state = loaded.state
    result: dict[str, Any] = dict(state.result or {}) if isinstance(state, RestoreJob) else {}
    return Restored(
        job_id=state.job_id,
        snapshot_id=sid,
        in_place=in_place,
        kind=result.get("kind"),
        target=result.get("target"),
        files=result.get("files"),
        dirs=result.get("dirs"),
        symlinks=result.get("symlinks"),
        bytes=result.get("bytes"),
        already_there=result.get("already_there"),
        special_bits_cleared=result.get("special_bits_cleared"),
        restored=[RestoredFile(f["path"], f["size"], f["sha256"]) for f in result.get("restored") or []],
        database=result.get("database"),
        safety_copy=result.get("safety_copy"),
        notes=list(result.get("notes") or []),
    )
