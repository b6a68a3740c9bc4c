"""What each step of a job does, as plain functions the actors call: the engine, wired to settings.

Every step is safe to run again after its process died at any instant:
- `store` adopts the packs an interrupted attempt wrote, so their blobs are not stored twice;
- `commit` finds a manifest this job already wrote instead of writing a second one;
- `restore` recognises a file it already put in place;
- `stage` and `apply` (a restore into the live database) keep their staged copy and the safety copy
  under names made from the job id, so a second attempt reuses them (`restore_apply` says when
  a second attempt saves the live database again);
- the steps of a restore drill (`orchestrator/drillsteps.py`) write only into a scratch folder of
  their own, which they delete, and never touch the live database;
- the steps of a prune (`orchestrator/prunesteps.py`) each say there why they may run twice;
- `upload:<destination>` sends only what the log does not show on the destination, records what it
  sent in batches and keeps a Drive upload's session in the log (`orchestrator/uploads.py` says why
  each part may run twice).
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from capsule.adapters.files.backup import StoredFiles, commit_files, store_files
from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.entry_rules import check_database_snapshot
from capsule.adapters.repository.lock import locked, read_locks
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import fetch_whole_packs, restore_snapshot, safe_target, write_entry
from capsule.adapters.sqlite.backup import StoredDatabase, commit_database, store_database
from capsule.adapters.sqlite.pagestore import sha256_file
from capsule.adapters.sqlite.snapshot import check_database, copy_into_live
from capsule.adapters.sqlite.sourcelock import source_lock
from capsule.domain import drill_job, prune_job
from capsule.domain.backup_job import COMMIT, STORE, is_upload, step_target, upload_destination
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.manifest import Manifest, SnapshotKind
from capsule.orchestrator import faults
from capsule.orchestrator.safety import name_pending, prune, remove_pending, safety_path, save_pending
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository
from capsule.orchestrator.usecases.restore import check_in_place_source
from capsule.orchestrator.usecases.snapshots import resolve_snapshot
from capsule.orchestrator.usecases.source import open_source

if TYPE_CHECKING:
    from capsule.orchestrator.runtime import Runtime

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


class StepRefused(CapsuleError):
    """Raised when a step cannot run as asked and trying again would not help."""

    category = Category.REFUSED


@dataclass(frozen=True)
class StepContext:
    """What a step gets: the job, its request, the results of earlier steps, and how to report."""

    settings: Settings
    job_id: str
    step: str
    attempt: int
    request: dict[str, Any]
    results: dict[str, dict[str, Any]]
    now: datetime
    progress: Progress
    resume_from: dict[str, Any] | None = None
    """The last progress an earlier attempt of this step reported (done, total, detail)."""
    runtime: Runtime | None = None
    """The worker's own runtime, for a step that reads the log (a prune's plan and wait): one
    opened per step would check the log's schema again. None: the step opens its own."""


StepFunction = Callable[[StepContext], dict[str, Any]]

SNAPSHOT_KINDS: tuple[SnapshotKind, ...] = ("database", "files")
EVENT_WARNINGS = 50


# ---- backup -------------------------------------------------------------------------------


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

    progress = _halfway(ctx, "store")

    if kind == "files":
        with locked(repo.backend, "backup", timeout=settings.lock_wait_seconds):
            faults.point("store:locked")
            files = store_files(repo, source, full=full, progress=progress, now=ctx.now)
        faults.point("store:stored")
        return {"files": files.model_dump(mode="json"), "warnings": _warnings(files)}
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


def _halfway(ctx: StepContext, name: str) -> Progress:
    """The step's progress, with the fault point `<name>:halfway` once half the work is done."""

    def progress(done: int, total: int) -> None:
        ctx.progress(done, total)
        if done * 2 >= total:
            faults.point(f"{name}:halfway")

    return progress


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
            files = StoredFiles.model_validate(stored_result["files"])
            result = commit_files(repo, files, full=full, tags=tags, job_id=ctx.job_id, retry=retry)
        else:
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
            progress=_halfway(ctx, "upload"),
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


# ---- restore into a folder ----------------------------------------------------------------


def restore_to_folder(ctx: StepContext) -> dict[str, Any]:
    settings = ctx.settings
    to = Path(ctx.request["target"])
    repo = open_source(settings, ctx.request.get("source"))
    with locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True):
        sid, manifest = resolve_snapshot(repo, ctx.request["snapshot_id"])
        force = bool(ctx.request.get("force"))
        include = list(ctx.request.get("include") or [])
        special_bits = bool(ctx.request.get("special_bits"))
        if manifest.kind == "files":
            return _restore_files(
                ctx, repo, sid, manifest, to, include=include, force=force, special_bits=special_bits
            )
        if include:
            raise StepRefused(
                f"snapshot {sid[:12]} holds a database: --include picks files of a files snapshot"
            )
        found = _found_before(to, manifest.entries) if ctx.attempt > 1 else []
        if found and not force and all(f is True for f in found):
            # An earlier attempt put every file in place and died before saying so.
            return {
                "snapshot_id": sid,
                "files": len(manifest.entries),
                "bytes": sum(e.size for e in manifest.entries),
                "restored": [
                    {"path": str(safe_target(to, e.path)), "size": e.size, "sha256": e.sha256}
                    for e in manifest.entries
                ],
            }
        if ctx.attempt > 1:
            for entry in manifest.entries:
                target = safe_target(to, entry.path)
                _remove_partial_writes(target.parent, target.name)
        restored = restore_snapshot(
            repo,
            manifest,
            to,
            # After a crash, a file equal to the snapshot is this job's own: replacing it is safe.
            force=force or (bool(found) and all(f is not False for f in found)),
            progress=_halfway(ctx, "restore"),
            check_database=bool(ctx.request.get("check")),
            workers=settings.workers,
            special_bits=special_bits,
        )
    faults.point("restore:written")
    return {
        "snapshot_id": sid,
        "files": len(restored),
        "bytes": sum(r.size for r in restored),
        "restored": [{"path": str(r.path), "size": r.size, "sha256": r.sha256} for r in restored],
    }


def _restore_files(
    ctx: StepContext,
    repo: Repository,
    sid: str,
    manifest: Manifest,
    to: Path,
    *,
    include: list[str],
    force: bool,
    special_bits: bool,
) -> dict[str, Any]:
    # Loaded by a files restore alone: the other jobs' processes (a backup, a prune) never need it.
    from capsule.adapters.files.restore import remove_partial_writes, restore_files  # noqa: PLC0415

    if ctx.attempt > 1:
        # Files an earlier attempt put in place are found equal to the snapshot and left alone.
        remove_partial_writes(to)
    else:
        remove_partial_writes(to, owner="gone")
    done = restore_files(
        repo,
        manifest,
        to,
        include=include,
        force=force,
        special_bits=special_bits,
        progress=_halfway(ctx, "restore"),
        workers=ctx.settings.workers,
    )
    faults.point("restore:written")
    return {
        "snapshot_id": sid,
        "kind": "files",
        "target": str(to),
        "files": done.files,
        "dirs": done.dirs,
        "symlinks": done.symlinks,
        "bytes": done.bytes,
        "already_there": done.already_there,
        "special_bits_cleared": done.special_bits_cleared,
    }


def _found_before(to: Path, entries: list[Any]) -> list[bool | None]:
    """For each entry: None if nothing is at its place, True if the snapshot's file is, False if
    another file is (which only --force may replace). Each file is hashed at most once."""
    found: list[bool | None] = []
    for entry in entries:
        target = safe_target(to, entry.path)
        if not target.exists():
            found.append(None)
        elif not target.is_file():
            found.append(False)
        else:
            found.append(target.stat().st_size == entry.size and sha256_file(target) == entry.sha256)
    return found


# ---- restore into the live database --------------------------------------------------------


def _staged_path(settings: Settings, job_id: str) -> Path:
    return settings.staging / f"restore-{job_id}-{settings.database.name}"


def _remove_partial_writes(folder: Path, name: str) -> None:
    """Temporary files an attempt killed while writing `name` left behind (restore writes
    `.<name>.capsule-restore-<random>` and renames it only once checked)."""
    for leftover in folder.glob(f".{name}.capsule-restore-*"):
        leftover.unlink(missing_ok=True)


def restore_stage(ctx: StepContext) -> dict[str, Any]:
    """Refuse a snapshot of another source unless the request allows it; then verify the snapshot
    into staging: every blob, the file's SHA-256 and SQLite's check."""
    settings = ctx.settings
    repo = open_source(settings, ctx.request.get("source"))
    holder = f"restore job {ctx.job_id}"
    with (
        source_lock(settings.home, settings.database, holder, settings.lock_wait_seconds),
        locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True),
    ):
        sid, manifest = resolve_snapshot(repo, ctx.request["snapshot_id"])
        if manifest.kind != "database":
            raise StepRefused(f"snapshot {sid[:12]} holds files, not a database")
        check_database_snapshot(manifest)
        notes = check_in_place_source(
            settings, sid, manifest, from_other_source=bool(ctx.request.get("from_other_source"))
        )
        staged = _staged_path(settings, ctx.job_id)
        entry = manifest.entries[0]
        if not (staged.is_file() and sha256_file(staged) == entry.sha256):
            _remove_partial_writes(staged.parent, staged.name)
            repo.ensure_index()
            # Capsule's own copy until it is applied: private, whatever the snapshot's mode.
            with fetch_whole_packs(repo, [entry], staged.parent):
                tmp = write_entry(
                    repo, entry, staged, _halfway(ctx, "stage"), check_database=True, mode=0o600
                )
            os.replace(tmp.path, staged)
    faults.point("stage:staged")
    return {"snapshot_id": sid, "staged": str(staged), "sha256": entry.sha256, "notes": notes}


def restore_apply(ctx: StepContext) -> dict[str, Any]:
    """Save the live database aside, then copy the staged database into it through SQLite's
    backup API.

    One safety copy per job (capsule.orchestrator.safety), saved right before the live database is
    replaced, so that no sale made while the restore was staged is lost. It is written under a
    pending name and named just before the first byte is copied into the live database:
    - an attempt that died before that leaves only the pending copy, and the live database
      untouched: the next attempt saves it again, with the sales made meanwhile;
    - an attempt that died after it may have left the live database part or wholly restored: the
      next attempt keeps the named copy as it is and never saves the live database over it.
    Once the live database holds the snapshot, only the newest CAPSULE_SAFETY_COPIES copies are
    kept, this job's among them.
    """
    settings = ctx.settings
    staged = Path(ctx.results["stage"]["staged"])
    if not staged.is_file() or sha256_file(staged) != ctx.results["stage"]["sha256"]:
        raise StepRefused(f"the staged copy {staged} is missing or changed; request the restore again")
    problems = check_database(staged)
    if problems:
        raise StepRefused(f"the staged copy fails SQLite's check: {problems[0]}")
    safety = safety_path(settings, ctx.job_id)
    holder = f"restore job {ctx.job_id}"
    with source_lock(settings.home, settings.database, holder, settings.lock_wait_seconds):
        named = safety.exists()
        if named:
            log.info("keeping the safety copy saved before an earlier attempt began", safety_copy=str(safety))
        else:
            save_pending(settings.database, safety)
        faults.point("apply:checked")
        if not named:
            name_pending(safety)
        copy_into_live(staged, settings.database)
        faults.point("apply:copied")
        prune(settings, ctx.job_id)
    # The staged copy stays until the job is over: an attempt that dies here can apply it again.
    stage = ctx.results["stage"]
    return {
        "snapshot_id": stage["snapshot_id"],
        "database": str(settings.database),
        "safety_copy": str(safety),
        "files": 1,
        "bytes": staged.stat().st_size,
        "notes": list(stage.get("notes") or []),
    }


def release_own_locks(settings: Settings) -> None:
    """Remove the repository locks this process holds, for a process about to exit without
    unwinding its steps (Ctrl-C, SIGTERM). Best effort: a lock left behind is stale once this
    process is gone, and the next process on this host removes it."""
    backend = open_backend(settings.repository)
    host, pid = socket.gethostname(), os.getpid()
    try:
        for info in read_locks(backend):
            if info.hostname == host and info.pid == pid:
                backend.remove("locks", info.name)
    except (OSError, CapsuleError) as e:
        log.warning("could not release this process's repository locks", error=str(e))


def clean_up(settings: Settings, job_id: str) -> None:
    """Remove what a finished job may have left in staging, and a safety copy it never needed."""
    staged = _staged_path(settings, job_id)
    staged.unlink(missing_ok=True)
    _remove_partial_writes(staged.parent, staged.name)
    remove_pending(safety_path(settings, job_id))


def _loaded_when_run(module: str, table: str, job_type: str, step: str) -> StepFunction:
    """The step `step` of `table` in `module`, whose code is loaded the first time a job runs it:
    a backup's process never loads the drill's or the prune's code, nor what they need."""

    def run(ctx: StepContext) -> dict[str, Any]:
        steps: dict[tuple[str, str], StepFunction] = getattr(importlib.import_module(module), table)
        return steps[(job_type, step)](ctx)

    run.__name__ = run.__qualname__ = f"{job_type}_{step}"
    return run


ELSEWHERE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "drill": ("capsule.orchestrator.drillsteps", "DRILL_STEPS", drill_job.PLAN),
    "prune": ("capsule.orchestrator.prunesteps", "PRUNE_STEPS", prune_job.PLAN),
}
"""Job types whose steps live in a module of their own: the module, its table of steps, their names."""

STEPS: dict[tuple[str, str], StepFunction] = {
    **{("backup", step): backup_store for step in (STORE, *(f"{STORE}:{k}" for k in SNAPSHOT_KINDS))},
    **{("backup", step): backup_commit for step in (COMMIT, *(f"{COMMIT}:{k}" for k in SNAPSHOT_KINDS))},
    ("restore", "restore"): restore_to_folder,
    ("restore", "stage"): restore_stage,
    ("restore", "apply"): restore_apply,
    **{
        (job_type, step): _loaded_when_run(module, table, job_type, step)
        for job_type, (module, table, names) in ELSEWHERE.items()
        for step in names
    },
}


def step_function(job_type: str, step: str) -> StepFunction | None:
    """What runs `step` of a job of `job_type`; an upload step names its destination."""
    if job_type == "backup" and is_upload(step):
        return backup_upload
    return STEPS.get((job_type, step))
