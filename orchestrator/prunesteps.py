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
The engine (capsule.adapters.repository.prune) holds a repository lock of operation `prune` during
each phase; it is a shared one, so backups never wait for a prune.

The grace period (`wait`) does not hold a worker forever: it looks every WAIT_POLL_SECONDS, reports
progress (its lease is kept and a cancel stops it), and gives up after WAIT_LIMIT_SECONDS with an
error that can be retried, so the job runner tries it again later under its retry policy.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.backends.storage import KINDS, Backend
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.jobs import FINISHED
from capsule.domain.prune_job import DELETE, INDEX, PLAN_STEP, REPACK, WAIT, is_store_step, still_to_wait_for
from capsule.orchestrator import faults
from capsule.orchestrator.usecases.repository import open_repository

if TYPE_CHECKING:
    from capsule.orchestrator.runtime import Runtime
    from capsule.orchestrator.settings import Settings
    from capsule.orchestrator.steps import StepContext, StepFunction

log = structlog.get_logger(__name__)

WAIT_POLL_SECONDS = 2.0
WAIT_LIMIT_SECONDS = 15 * 60.0
"""How long one attempt of the grace period waits before it ends as "not yet", to be retried."""


class StillInUse(CapsuleError):
    """Raised when the grace period has not ended within one attempt: a backup that may refer to
    the old packs, or a lock seen when it began, is still there. Retried later."""

    category = Category.LOCKED


def stored_bytes(backend: Backend) -> int:
    """The bytes the repository holds: every object but the locks (what a prune may change)."""
    total = 0
    for kind in KINDS:
        if kind == "locks":
            continue
        for name in backend.list(kind):
            try:
                total += backend.size(kind, name)
            except FileNotFoundError:
                continue  # removed while we looked: a rebuilt index, a pack another prune deleted
    if backend.exists("config", "config"):
        total += backend.size("config", "config")
    return total


def repository_bytes(settings: Settings) -> int:
    """`stored_bytes` of the configured repository, without its key: a scan of object sizes."""
    return stored_bytes(open_backend(settings.repository))


def _elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)


def prune_plan(ctx: StepContext) -> dict[str, Any]:
    """List the packs to delete and to repack; record the plan and the repository's size now."""
    from capsule.adapters.repository.prune import plan_prune  # noqa: PLC0415 - numpy and the index

    started = time.monotonic()
    repo = open_repository(ctx.settings)
    before = stored_bytes(repo.backend)
    plan = plan_prune(repo, repack_unused_percent=int(ctx.request["repack_unused_percent"]))
    faults.point("plan:planned")
    return {
        "plan": plan.to_json(),
        "bytes_before": before,
        **plan_figures(plan),
        "seconds": _elapsed(started),
    }


def plan_figures(plan: Any) -> dict[str, int]:
    """What a plan would reclaim, as the figures the job, the status and the dry run show."""
    totals = plan.totals if not callable(plan.totals) else plan.totals()
    get = totals.get if isinstance(totals, dict) else lambda k, d=0: getattr(totals, k, d)
    return {
        "packs": int(get("packs", 0)),
        "unused_bytes": int(get("unused_bytes", 0)),
        "packs_to_delete": int(get("packs_to_delete", 0)),
        "packs_to_repack": int(get("packs_to_repack", 0)),
        "bytes_to_free": int(get("bytes_to_free", 0)),
    }


def _plan(ctx: StepContext) -> Any:
    from capsule.adapters.repository.prune import PrunePlan  # noqa: PLC0415

    return PrunePlan.from_json(ctx.results[PLAN_STEP]["plan"])


def prune_repack(ctx: StepContext) -> dict[str, Any]:
    """Copy the used blobs of the packs to repack into new packs."""
    from capsule.adapters.repository.prune import repack  # noqa: PLC0415

    started = time.monotonic()
    repo = open_repository(ctx.settings)
    repacked = repack(repo, _plan(ctx), progress=ctx.progress)
    faults.point("repack:repacked")
    data = repacked.to_json() if hasattr(repacked, "to_json") else repacked
    return {"repacked": data, "packs_repacked": _count(data, "packs_repacked"), "seconds": _elapsed(started)}


def _repacked(ctx: StepContext) -> Any:
    from capsule.adapters.repository import prune  # noqa: PLC0415

    data = ctx.results[REPACK]["repacked"]
    loader = getattr(getattr(prune, "Repacked", None), "from_json", None)
    return loader(data) if loader is not None else data


def _count(data: Any, key: str) -> int:
    value = data.get(key) if isinstance(data, dict) else getattr(data, key, None)
    if isinstance(value, list | tuple | dict):
        return len(value)
    return int(value) if isinstance(value, int) else 0


def prune_index(ctx: StepContext) -> dict[str, Any]:
    """Write the index without the packs that go; the old index files are removed after."""
    from capsule.adapters.repository.prune import rewrite_index  # noqa: PLC0415

    started = time.monotonic()
    repo = open_repository(ctx.settings)
    written = rewrite_index(repo, _plan(ctx), _repacked(ctx))
    faults.point("index:written")
    return {"index_files": list(written), "seconds": _elapsed(started)}


def prune_wait(ctx: StepContext) -> dict[str, Any]:
    """The grace period: wait until the backups that may refer to the old packs have finished and
    the lock holders seen now are gone."""
    from capsule.adapters.repository.lock import lock_owners, owners_gone  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415 - a cycle at import time

    started = time.monotonic()
    backend = open_backend(ctx.settings.repository)
    owners = lock_owners(backend)
    runtime = Runtime(ctx.settings)
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
    """Delete the packs the new index no longer names, keeping those a backup came to use."""
    from capsule.adapters.repository.prune import finish_prune  # noqa: PLC0415

    started = time.monotonic()
    repo = open_repository(ctx.settings)
    result = finish_prune(repo, _plan(ctx), _repacked(ctx))
    faults.point("delete:deleted")
    data = result.to_json() if hasattr(result, "to_json") else result
    return {
        "packs_deleted": _count(data, "packs_deleted"),
        "bytes_freed": _count(data, "bytes_freed"),
        "packs_rescued": _count(data, "packs_rescued"),
        "bytes_after": stored_bytes(repo.backend),
        "seconds": _elapsed(started),
    }


PRUNE_STEPS: dict[tuple[str, str], StepFunction] = {
    ("prune", PLAN_STEP): prune_plan,
    ("prune", REPACK): prune_repack,
    ("prune", INDEX): prune_index,
    ("prune", WAIT): prune_wait,
    ("prune", DELETE): prune_delete,
}
