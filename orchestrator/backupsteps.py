"""The steps of a backup: store, commit, and an upload per destination.

Each step is safe to run again after its process died at any instant:
- `store` adopts the packs an interrupted attempt wrote, so their blobs are not stored twice;
- `commit` finds a manifest this job already wrote instead of writing a second one;
- `upload:<destination>` sends only what the log does not show on the destination, records what it
  sent in batches and keeps a Drive upload's session in the log (`orchestrator/uploads.py` says why
  each part may run twice).

A step loads the engine of its own kind when it runs: a backup of the images never loads the
database's live copy and page store, nor a backup of the database the images' tree walker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from capsule.adapters.repository.lock import locked
from capsule.domain.backup_job import COMMIT, STORE, step_target, upload_destination
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import SnapshotKind
from capsule.orchestrator import faults
from capsule.orchestrator.steps import SNAPSHOT_KINDS, StepContext, StepFunction, halfway
from capsule.orchestrator.usecases.repository import open_repository

if TYPE_CHECKING:
    from capsule.adapters.files.backup import StoredFiles

log = structlog.get_logger(__name__)

EVENT_WARNINGS = 50


def _target(ctx: StepContext) -> tuple[SnapshotKind, Path]:
    kind, source = step_target(ctx.request["kind"], ctx.request["source"], ctx.step)
    return kind, Path(source)


def _store_step(ctx: StepContext) -> str:
    """The store step whose result a commit step writes: `store` for `commit`, `store:x` for `commit:x`."""
    return STORE + ctx.step[len(COMMIT) :]


def backup_store(ctx: StepContext) -> dict[str, Any]:
    settings = ctx.settings
    kind, source = _target(ctx)
    if ctx.resume_from is not None:
        # The packs an earlier attempt stored are adopted below: only hashing is done again.
        log.info("resuming after an interrupted attempt", done_before=ctx.resume_from.get("done"))
    repo = open_repository(settings)
    holder = f"backup job {ctx.job_id}"
    full = bool(ctx.request.get("full"))

    progress = halfway(ctx, "store")

    if kind == "files":
        from capsule.adapters.files.backup import store_files  # noqa: PLC0415 - an images backup's alone

        with locked(repo.backend, "backup", timeout=settings.lock_wait_seconds):
            faults.point("store:locked")
            files = store_files(repo, source, full=full, progress=progress, now=ctx.now)
        faults.point("store:stored")
        return {"files": files.model_dump(mode="json"), "warnings": _warnings(files)}
    from capsule.adapters.sqlite.backup import store_database  # noqa: PLC0415 - a database backup's alone
    from capsule.adapters.sqlite.sourcelock import source_lock  # noqa: PLC0415

    with (
        source_lock(settings.home, source, holder, settings.lock_wait_seconds),
        locked(repo.backend, "backup", timeout=settings.lock_wait_seconds),
    ):
        faults.point("store:locked")
        stored = store_database(
            repo,
            source,
            settings.staging,
            full=full,
            progress=progress,
            workers=settings.workers,
            copy_in_memory=settings.copy_in_memory,
        )
    faults.point("store:stored")
    result: dict[str, Any] = {"stored": stored.model_dump(mode="json")}
    if stored.warnings:
        result["warnings"] = {"count": len(stored.warnings), "items": stored.warnings[:EVENT_WARNINGS]}
    return result


def _warnings(files: StoredFiles) -> dict[str, Any]:
    # The step's result is an event: keep it small. The snapshot's manifest keeps more of them.
    return {"count": files.warning_count, "items": files.warnings[:EVENT_WARNINGS]}


def backup_commit(ctx: StepContext) -> dict[str, Any]:
    settings = ctx.settings
    stored_result = ctx.results[_store_step(ctx)]
    full = bool(ctx.request.get("full"))
    tags = list(ctx.request.get("tags") or [])
    retry = ctx.attempt > 1  # only a later attempt can find a manifest an earlier one wrote
    repo = open_repository(settings)
    with locked(repo.backend, "backup", timeout=settings.lock_wait_seconds):
        if "files" in stored_result:
            from capsule.adapters.files.backup import StoredFiles, commit_files  # noqa: PLC0415

            files = StoredFiles.model_validate(stored_result["files"])
            result = commit_files(repo, files, full=full, tags=tags, job_id=ctx.job_id, retry=retry)
        else:
            from capsule.adapters.sqlite.backup import StoredDatabase, commit_database  # noqa: PLC0415

            stored = StoredDatabase.model_validate(stored_result["stored"])
            result = commit_database(
                repo, stored, full=full, now=ctx.now, tags=tags, job_id=ctx.job_id, retry=retry
            )
    faults.point("commit:written")
    manifest = result.manifest
    return {
        "snapshot_id": result.snapshot_id,
        "kind": manifest.kind,
        "source": manifest.source,
        "time": manifest.time.isoformat(),
        "totals": manifest.totals.model_dump(mode="json"),
    }


def backup_upload(ctx: StepContext) -> dict[str, Any]:
    """Send one destination what it lacks; a destination that fails is the result, never an error."""
    from capsule.orchestrator.runtime import SYSTEM, Runtime  # noqa: PLC0415 - a cycle at import time
    from capsule.orchestrator.uploads import upload  # noqa: PLC0415

    runtime = Runtime(ctx.settings)
    try:
        _wait_for_earlier_uploads(ctx, runtime)
        outcome = upload(
            ctx.settings,
            runtime,
            upload_destination(ctx.step),
            ctx.job_id,
            actor=f"{SYSTEM}:upload",
            now=ctx.now,
            progress=halfway(ctx, "upload"),
        )
    finally:
        runtime.close()
    result = outcome.as_result()
    if outcome.ok:
        result.update(_copy_log(ctx))
    return result


def _copy_log(ctx: StepContext) -> dict[str, Any]:
    """A copy of the event log on the destination now and then (logcopy.AFTER_UPLOAD_EVERY), so
    that a copy is recoverable without `capsule sync`; its failure is said, never the step's."""
    from capsule.orchestrator.usecases.logcopy import copy_log_after_upload  # noqa: PLC0415

    try:
        copied = copy_log_after_upload(ctx.settings, upload_destination(ctx.step), ctx.now)
    except (CapsuleError, OSError) as e:
        log.warning("the event log was not copied to the destination", step=ctx.step, error=str(e))
        return {"event_log_error": str(e)}
    return {"event_log": copied.name} if copied is not None and copied.written else {}


UPLOAD_POLL_SECONDS = 2.0


def _wait_for_earlier_uploads(ctx: StepContext, runtime: Any) -> None:
    """Wait while a backup requested earlier uploads to the same destination: one upload at a time
    per destination, so two never share a resumable session; the later one then sends what the
    earlier left. Only backups requested earlier are waited for: no two wait for each other. The
    lease is kept meanwhile, and a cancel stops the wait."""
    from capsule.orchestrator import projections  # noqa: PLC0415

    me = projections.get_job(runtime.engine, ctx.job_id)
    mine = (me["requested_at"], ctx.job_id) if me is not None else None
    while mine is not None:
        running = projections.list_jobs(runtime.engine, limit=1000, status="running", job_type="backup")
        earlier = [
            r
            for r in running
            if r["current_step"] == ctx.step and (r["requested_at"], str(r["job_id"])) < mine
        ]
        if not earlier:
            return
        log.info("waiting for an earlier upload to the same destination", job=earlier[0]["job_id"])
        ctx.progress(0, 1)
        time.sleep(UPLOAD_POLL_SECONDS)


BACKUP_STEPS: dict[tuple[str, str], StepFunction] = {
    **{("backup", step): backup_store for step in (STORE, *(f"{STORE}:{k}" for k in SNAPSHOT_KINDS))},
    **{("backup", step): backup_commit for step in (COMMIT, *(f"{COMMIT}:{k}" for k in SNAPSHOT_KINDS))},
}
