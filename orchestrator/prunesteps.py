"""The steps of a prune: plan, repack, index, wait, delete (see capsule.domain.prune_job).

Each step is safe to run again after its process died at any instant:
- `plan` only reads; a second attempt plans again from the repository as it is then;
- `repack` writes new packs only (content-addressed), from the plan the first step recorded; a
  second attempt copies again what the first had not recorded, and a pack the first wrote but never
  recorded is unused, for the next prune to find;
- `index` writes new index files for the blobs' new places before it removes the old files, so a
  reader always finds every blob a snapshot uses;
- `wait` deletes nothing: it only looks at the event log and the repository's locks;
- `delete` deletes packs the new index no longer names, except those a backup came to use since
  the plan (rescued); deleting a pack already gone is not an error, so a second attempt finishes
  what the first began.
Each phase runs under the repository lock of operation `prune`, taken here: a shared one, so
backups never wait for a prune, while a second prune or an exclusive operation does. The engine's
fault points (`prune:index-written`, `prune:pack-deleted`, ...) are this process's fault points.

The grace period (`wait`) does not hold a worker forever: it looks every WAIT_POLL_SECONDS, reports
progress (its lease is kept and a cancel stops it), and gives up after WAIT_LIMIT_SECONDS with an
error that can be retried, so the job runner tries it again later under its retry policy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.lock import PRUNE, lock_owners, locked, owners_gone
from capsule.adapters.repository.prune import finish_prune, plan_prune, repack, rewrite_index
from capsule.adapters.repository.pruneplan import PrunePlan, Repacked
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.jobs import FINISHED
from capsule.domain.prune_job import DELETE, INDEX, PLAN_STEP, REPACK, WAIT, is_store_step, still_to_wait_for
from capsule.orchestrator import faults
from capsule.orchestrator.errors import OrchestratorError
from capsule.orchestrator.usecases.prune import stored_bytes
from capsule.orchestrator.usecases.repository import open_repository

if TYPE_CHECKING:
    from capsule.orchestrator.runtime import Runtime
    from capsule.orchestrator.steps import StepContext, StepFunction

log = structlog.get_logger(__name__)

WAIT_POLL_SECONDS = 2.0
WAIT_LIMIT_SECONDS = 15 * 60.0
"""How long one attempt of the grace period waits before it ends as "not yet", to be retried."""


class StillInUse(OrchestratorError):
    """Raised when the grace period has not ended within one attempt: a backup that may refer to
    the old packs, or a lock seen when it began, is still there. Retried later, as the
    orchestrator's own errors are (`actors.is_transient`)."""

    category = Category.LOCKED


def as_json(data: dict[str, Any]) -> dict[str, Any]:
    """`data` as the log stores it: lists for tuples (the engine's `to_json` keeps its tuples)."""
    loaded: dict[str, Any] = json.loads(json.dumps(data))
    return loaded


def _elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)


@contextmanager
def _prune_lock(ctx: StepContext) -> Iterator[Repository]:
    """The repository, under the shared `prune` lock for one phase: backups run on beside it, a
    second prune or an exclusive operation (an index rebuild) waits or is refused."""
    repo = open_repository(ctx.settings)
    with locked(repo.backend, PRUNE, timeout=ctx.settings.lock_wait_seconds):
        yield repo


def plan_figures(plan: PrunePlan) -> dict[str, int]:
    """What a plan would reclaim, as the figures the job, the status and the dry run show."""
    totals = plan.totals
    return {
        "packs": totals.packs,
        "pack_bytes": totals.pack_bytes,
        "unused_bytes": totals.unused_bytes,
        "packs_to_delete": len(plan.condemned),  # a repacked pack is deleted too
        "packs_to_repack": len(plan.repack),
        "bytes_to_free": totals.reclaim_bytes,
        "packs_young": totals.young_packs,
    }


def prune_plan(ctx: StepContext) -> dict[str, Any]:
    """List the packs to delete and to repack; record the plan and the repository's size now."""
    from capsule.orchestrator.usecases.forget import forgotten_ids  # noqa: PLC0415

    started = time.monotonic()
    gone = forgotten_ids(ctx.settings, ctx.runtime.engine if ctx.runtime is not None else None)
    with _prune_lock(ctx) as repo:
        # A forget killed between its event and the deletion of the manifest left it behind: its
        # data would count as in use. Finish that forget first, as the next forget would.
        for sid in sorted(gone.intersection(repo.backend.list("snapshots"))):
            repo.backend.remove("snapshots", sid)
            log.info("finished forgetting a snapshot a killed forget left", snapshot=sid[:12])
        before = stored_bytes(repo.backend)
        plan = plan_prune(
            repo, repack_unused_percent=int(ctx.request["repack_unused_percent"]), keep_used=True
        )
    faults.point("plan:planned")
    figures = plan_figures(plan)
    return {"plan": as_json(plan.to_json()), "bytes_before": before, **figures, "seconds": _elapsed(started)}


def _plan(ctx: StepContext) -> PrunePlan:
    return PrunePlan.from_json(ctx.results[PLAN_STEP]["plan"])


def _repacked(ctx: StepContext) -> Repacked:
    return Repacked.from_json(ctx.results[REPACK]["repacked"])


def prune_repack(ctx: StepContext) -> dict[str, Any]:
    """Copy the used blobs of the condemned packs into new packs, and index those."""
    started = time.monotonic()
    with _prune_lock(ctx) as repo:
        repacked = repack(repo, _plan(ctx), progress=ctx.progress, checkpoint=faults.point)
    return {
        "repacked": as_json(repacked.to_json()),
        "packs_repacked": len(_plan(ctx).repack),
        "packs_written": len(repacked.packs),
        "bytes_written": repacked.bytes_written,
        "seconds": _elapsed(started),
    }


def prune_index(ctx: StepContext) -> dict[str, Any]:
    """Write the index without the condemned packs; the old index files are removed after."""
    started = time.monotonic()
    with _prune_lock(ctx) as repo:
        written = rewrite_index(repo, _plan(ctx), _repacked(ctx), checkpoint=faults.point)
    return {"index_files": list(written), "seconds": _elapsed(started)}


def prune_wait(ctx: StepContext) -> dict[str, Any]:
    """The grace period: wait until the backups that may refer to the old packs have finished and
    the lock holders seen now are gone."""
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415 - a cycle at import time

    started = time.monotonic()
    backend = open_backend(ctx.settings.repository)
    owners = lock_owners(backend)
    runtime = ctx.runtime if ctx.runtime is not None else Runtime(ctx.settings)
    try:
        index_at = _index_position(runtime, ctx.job_id)
        waited_for: list[str] = []
        limit = min(WAIT_LIMIT_SECONDS, ctx.settings.step_time_limit_seconds / 2)
        while True:
            backups = backups_to_wait_for(runtime, index_at)
            waited_for = sorted(set(waited_for) | set(backups))
            gone = owners_gone(backend, owners)
            if not backups and gone:
                break
            elapsed = time.monotonic() - started
            if elapsed >= limit:
                raise StillInUse(
                    "the prune waits for "
                    + (f"backup job(s) {', '.join(backups)} " if backups else "")
                    + ("and " if backups and not gone else "")
                    + ("the repository's lock holders to finish" if not gone else "to finish")
                    + "; it is tried again later"
                )
            ctx.progress(int(elapsed), int(limit))  # keeps the lease; raises if the job was cancelled
            time.sleep(WAIT_POLL_SECONDS)
    finally:
        if runtime is not ctx.runtime:
            runtime.close()
    faults.point("wait:waited")
    return {"backups": waited_for, "lock_owners": len(owners), "seconds": _elapsed(started)}


def _index_position(runtime: Runtime, job_id: str) -> int:
    """The log position of the StepCompleted of the prune's `index` step."""
    from capsule.domain import prune_job  # noqa: PLC0415

    for stored in runtime.store.read_stream(prune_job.stream_id(job_id)):
        if stored.type == "StepCompleted" and stored.data.get("step") == INDEX:
            return stored.position
    raise CapsuleError(f"prune job {job_id} has no completed index step; the wait step cannot start")


def backups_to_wait_for(runtime: Runtime, index_at: int) -> list[str]:
    """The unfinished backups whose store step first started before log position `index_at`."""
    from capsule.domain import backup_job  # noqa: PLC0415

    starts: dict[str, int] = {}
    for job_id, job_type in runtime.unfinished():
        if job_type != "backup":
            continue
        for stored in runtime.store.read_stream(backup_job.stream_id(job_id)):
            if stored.type == "StepStarted" and is_store_step(str(stored.data.get("step"))):
                starts[job_id] = stored.position
                break
    # A job listed as unfinished may have finished since: its own log is the truth.
    finished = [j for j in starts if runtime.load("backup", j).state.status in FINISHED]
    return still_to_wait_for(index_at, starts, finished)


def prune_delete(ctx: StepContext) -> dict[str, Any]:
    """Delete the condemned packs, keeping those a snapshot written since the plan needs."""
    started = time.monotonic()
    with _prune_lock(ctx) as repo:
        result = finish_prune(repo, _plan(ctx), _repacked(ctx), checkpoint=faults.point)
        after = stored_bytes(repo.backend)
    return {
        "result": as_json(result.to_json()),
        "packs_deleted": len(result.deleted),
        "bytes_deleted": result.freed_bytes,
        "packs_rescued": len(result.rescued),
        "bytes_after": after,
        "seconds": _elapsed(started),
    }


PRUNE_STEPS: dict[tuple[str, str], StepFunction] = {
    ("prune", PLAN_STEP): prune_plan,
    ("prune", REPACK): prune_repack,
    ("prune", INDEX): prune_index,
    ("prune", WAIT): prune_wait,
    ("prune", DELETE): prune_delete,
}
