"""Use case: give back the space of data no snapshot uses any more, as a job; or only say how much.

A prune runs as a job of five steps (see capsule.domain.prune_job and
capsule.orchestrator.prunesteps). Backups keep running while it does: it takes no exclusive lock,
and it deletes a pack only once every backup that may have read the old index has finished. One
prune runs at a time; asking for a second while one has not finished waits for that one.

A dry run plans only: it reads the repository, writes nothing, and records nothing in the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from capsule.adapters.repository.backends.storage import Backend, Kind
    from capsule.orchestrator.reads import Reads

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Prune:
    dry_run: bool = False
    """Plan only, and say what a prune would reclaim."""
    actor: str | None = None
    """Who asks; None: the person at this machine's terminal."""


@dataclass(frozen=True)
class Pruned:
    """What a prune reclaimed (or, for a dry run, would reclaim), with the repository's size."""

    job_id: str | None
    """None for a dry run, which is no job."""
    dry_run: bool
    repack_unused_percent: int
    bytes_before: int
    """Bytes the repository held (every object but the locks) when the prune planned."""
    bytes_after: int
    """Bytes it holds afterwards; for a dry run, what it would hold at most."""
    bytes_freed: int
    """What the prune gave back: the packs deleted less the new packs written; for a dry run, about
    what it would give back."""
    unused_bytes: int
    """Bytes of packs that no snapshot uses, as the plan measured them."""
    packs_deleted: int
    packs_repacked: int
    packs_rescued: int
    seconds: float
    bytes_deleted: int | None = None
    """Bytes of the packs deleted (None for a dry run)."""
    bytes_written: int | None = None
    """Bytes of the new packs the blobs still in use were copied into (None for a dry run)."""
    packs_young: int = 0
    """Packs left alone because they are younger than the engine's KEEP_YOUNGER_THAN (two hours): a
    backup running now may still adopt them. The next prune looks at them again."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "dry_run": self.dry_run,
            "repack_unused_percent": self.repack_unused_percent,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_freed": self.bytes_freed,
            "unused_bytes": self.unused_bytes,
            "packs_deleted": self.packs_deleted,
            "packs_repacked": self.packs_repacked,
            "packs_rescued": self.packs_rescued,
            "seconds": self.seconds,
            "packs_young": self.packs_young,
            "bytes_deleted": self.bytes_deleted,
            "bytes_written": self.bytes_written,
        }


def stored_bytes(backend: Backend) -> int:
    """The bytes the repository holds: every object but the locks (what a prune may change). A
    listing of object sizes: no snapshot, index or pack is read."""
    total = 0
    kinds: tuple[Kind, ...] = ("keys", "data", "index", "snapshots", "damaged")
    for kind in kinds:
        for name in backend.list(kind):
            try:
                total += backend.size(kind, name)
            except FileNotFoundError:
                continue  # removed while we looked: a rewritten index, a pack a prune deleted
    if backend.exists("config", "config"):
        total += backend.size("config", "config")
    return total


def repository_bytes(settings: Settings) -> int:
    """`stored_bytes` of the configured repository; its key is not needed."""
    from capsule.adapters.repository.backends import open_backend  # noqa: PLC0415

    return stored_bytes(open_backend(settings.repository))


def repack_unused_percent(settings: Settings, engine: Engine | None = None) -> int:
    """The share of a pack's bytes that must be unused before it is repacked: the setting
    `retention.repack-unused-percent` (10 unless changed). Read through `engine` if given (a
    runtime's own: one opened for a single read checks the log's schema again), else through
    the settings use case."""
    if engine is None:
        from capsule.orchestrator.usecases.settings import show  # noqa: PLC0415

        return show(settings).document.retention.repack_unused_percent
    import json  # noqa: PLC0415

    from capsule.domain import settings as document  # noqa: PLC0415
    from capsule.orchestrator import projections  # noqa: PLC0415

    row = projections.settings_row(engine)
    values = json.loads(row["changed_values"]) if row else {}
    return document.from_values(values).retention.repack_unused_percent


def run_prune(settings: Settings, request: Prune, progress: Progress | None = None) -> Pruned:
    """Prune and wait for it (or join the prune that has not finished); raise `JobFailed` unless
    it completes. A dry run plans only (`plan_only`)."""
    if request.dry_run:
        return plan_only(settings)
    from capsule.domain.prune_job import PLAN_STEP, PruneJob, results  # noqa: PLC0415
    from capsule.orchestrator.jobrunner import run_job  # noqa: PLC0415 - the job runner loads slowly
    from capsule.orchestrator.runtime import person  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415

    open_repository(settings)  # no repository, or no key: said before a job is recorded for nothing
    loaded = run_job(
        settings,
        "prune",
        lambda rt: rt.request_prune(
            repack_unused_percent=repack_unused_percent(settings, rt.engine), actor=request.actor or person()
        ),
        progress=progress,
    )
    state = loaded.state
    assert isinstance(state, PruneJob) and state.outcome is not None
    done = state.outcome
    planned = results(state).get(PLAN_STEP, {})
    unused, young = planned.get("unused_bytes"), planned.get("packs_young")
    return Pruned(
        job_id=state.job_id,
        dry_run=False,
        repack_unused_percent=state.repack_unused_percent,
        bytes_before=done.bytes_before,
        bytes_after=done.bytes_after,
        bytes_freed=done.bytes_freed,
        unused_bytes=unused if isinstance(unused, int) else 0,
        packs_deleted=done.packs_deleted,
        packs_repacked=done.packs_repacked,
        packs_rescued=done.packs_rescued,
        seconds=done.seconds,
        packs_young=young if isinstance(young, int) else 0,
        bytes_deleted=done.bytes_deleted,
        bytes_written=done.bytes_written,
    )


def plan_only(settings: Settings) -> Pruned:
    """What a prune would reclaim now: the plan's figures; nothing is written or recorded."""
    from capsule.adapters.repository.lock import locked  # noqa: PLC0415
    from capsule.adapters.repository.prune import plan_prune  # noqa: PLC0415
    from capsule.orchestrator.prunesteps import plan_figures  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415

    started = time.monotonic()
    percent = repack_unused_percent(settings)
    repo = open_repository(settings)
    # A reader's lock: a dry run writes nothing, and must not stop a prune or a backup.
    with locked(repo.backend, "prune --dry-run", timeout=settings.lock_wait_seconds, reading=True):
        before = stored_bytes(repo.backend)
        figures = plan_figures(plan_prune(repo, repack_unused_percent=percent))
    return Pruned(
        job_id=None,
        dry_run=True,
        repack_unused_percent=percent,
        bytes_before=before,
        bytes_after=max(before - figures["bytes_to_free"], 0),
        bytes_freed=figures["bytes_to_free"],
        unused_bytes=figures["unused_bytes"],
        packs_deleted=figures["packs_to_delete"],
        packs_repacked=figures["packs_to_repack"],
        packs_rescued=0,
        seconds=round(time.monotonic() - started, 3),
        packs_young=figures["packs_young"],
    )


@dataclass(frozen=True)
class PruneStatus:
    """The repository's size and what the prunes said of it, for `capsule status`."""

    stored_bytes: int | None
    """Bytes the repository holds now (every object but the locks); None if it cannot be read."""
    unused_bytes: int | None
    """Unused bytes as the last prune's plan measured them; None before the first plan."""
    measured_at: datetime | None
    """When that plan was recorded."""
    unused_left: int | None
    """If the prune of that plan completed: what it measured unused, less what it set out to give
    back (packs below the repack threshold, and young ones, keep theirs); else None."""
    last_job_id: str | None
    last_finished_at: datetime | None
    """When the last completed prune finished; None: never."""
    last_freed: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stored_bytes": self.stored_bytes,
            "unused_bytes": self.unused_bytes,
            "unused_measured_at": self.measured_at,
            "unused_left_bytes": self.unused_left,
            "last_prune": None
            if self.last_job_id is None
            else {
                "job_id": self.last_job_id,
                "finished_at": self.last_finished_at,
                "bytes_freed": self.last_freed,
            },
        }


RECENT_PRUNES = 10


def prune_status(settings: Settings, reads: Reads) -> PruneStatus:
    """The repository's size (a listing of its objects' sizes, no snapshot read) and, from the
    log, the last prune's plan and the last completed prune."""
    from capsule.adapters.errors import RepositoryError  # noqa: PLC0415

    try:
        size: int | None = repository_bytes(settings)
    except (OSError, RepositoryError):
        size = None
    unused: int | None = None
    left: int | None = None
    measured: datetime | None = None
    last_id: str | None = None
    last_at: datetime | None = None
    freed: int | None = None
    for row in reads.list_jobs(limit=RECENT_PRUNES, job_type="prune"):
        # Loaded only for a log that holds prunes: the domain's events come with it, which take
        # about as long to load as `capsule status` without them takes to answer.
        from capsule.domain import prune_job  # noqa: PLC0415

        planned = unused is not None
        for stored in reads.read_stream(prune_job.stream_id(str(row["job_id"]))):
            data = stored.data
            if not planned and stored.type == "StepCompleted" and data.get("step") == prune_job.PLAN_STEP:
                result = data.get("result") or {}
                value, to_free = result.get("unused_bytes"), result.get("bytes_to_free")
                unused, measured = (value if isinstance(value, int) else None), stored.recorded_at
                if unused is not None and row.get("status") == "completed" and isinstance(to_free, int):
                    left = max(unused - to_free, 0)
            if last_id is None and stored.type == "PruneCompleted":
                last_id, last_at, freed = str(row["job_id"]), stored.recorded_at, int(data["bytes_freed"])
        if unused is not None and last_id is not None:
            break
    return PruneStatus(size, unused, measured, left, last_id, last_at, freed)
