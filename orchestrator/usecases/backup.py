"""Use case: back up the database, the product images, or both, as one job."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from capsule.adapters.repository.backups import BackupResult
from capsule.adapters.repository.lock import locked
from capsule.domain.manifest import Manifest
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository
from capsule.orchestrator.usecases.snapshots import resolve_snapshot

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Backup:
    kind: str = "database"
    """`database` (CAPSULE_DATABASE), `files` (the product images, CAPSULE_UPLOADS) or `all`."""
    full: bool = False
    """Re-read everything; reuse no blob whose pack is gone."""
    actor: str | None = None
    """Who asks; None: the person at this machine's terminal."""


@dataclass(frozen=True)
class CommittedSnapshot:
    snapshot_id: str
    manifest: Manifest


@dataclass(frozen=True)
class BackedUp:
    """The job and the snapshots it committed: one per source (two for a backup of `all`)."""

    job_id: str
    snapshots: list[CommittedSnapshot]
    uploads: list[dict[str, Any]] = field(default_factory=list)
    """What each destination's upload step did (`orchestrator/uploads.py`): status, objects sent."""


def backup_source(settings: Settings, kind: str) -> str:
    """The source a backup of `kind` records: a path, or both paths for `all`."""
    from capsule.domain.backup_job import all_source  # noqa: PLC0415 - the events load slowly

    database, uploads = str(settings.database.resolve()), str(settings.uploads.resolve())
    return {"database": database, "files": uploads}.get(kind) or all_source(database, uploads)


def back_up(settings: Settings, request: Backup, progress: Progress | None = None) -> BackedUp:
    """Run a backup job and wait for it; raise `JobFailed` unless it completes."""
    from capsule.domain.backup_job import BackupJob, committed_snapshot_ids, is_upload  # noqa: PLC0415
    from capsule.orchestrator.jobrunner import (  # noqa: PLC0415 - the job runner loads slowly
        continue_interrupted_backup,
        run_job,
    )
    from capsule.orchestrator.runtime import person  # noqa: PLC0415

    if settings.nice:
        os.nice(settings.nice)  # the shop's own programs keep the CPU they need
    source = backup_source(settings, request.kind)
    actor = request.actor or person()
    loaded = run_job(
        settings,
        "backup",
        # An interrupted backup of the same kind is finished rather than queued behind: one snapshot.
        lambda rt: (
            continue_interrupted_backup(rt, source, request.kind, request.full)
            or rt.request_backup(source=source, kind=request.kind, full=request.full, actor=actor)
        ),
        progress=progress,
    )
    state = loaded.state
    committed = committed_snapshot_ids(state) if isinstance(state, BackupJob) else []
    repo = open_repository(settings)
    snapshots = [CommittedSnapshot(*resolve_snapshot(repo, sid)) for sid in committed]
    uploads = [dict(s.result) for s in state.steps if is_upload(s.name) and s.result is not None]
    return BackedUp(state.job_id, snapshots, uploads)


def back_up_database_in_process(
    settings: Settings, *, full: bool = False, progress: Progress | None = None, now: datetime | None = None
) -> BackupResult:
    """The repository engine alone, without a job or its event log: what the job runner's overhead
    is measured against."""
    from capsule.adapters.sqlite.backup import backup_database  # noqa: PLC0415 - an images backup never needs it

    repo = open_repository(settings)
    with locked(repo.backend, "backup", timeout=settings.lock_wait_seconds):
        return backup_database(
            repo,
            settings.database,
            settings.staging,
            full=full,
            now=now or datetime.now(UTC),
            progress=progress,
            workers=settings.workers,
            copy_in_memory=settings.copy_in_memory,
        )
