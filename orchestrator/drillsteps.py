"""The steps of a restore drill: prove the newest snapshot of each kind restorable, at low priority.

Each step is safe to run again after its process died at any instant:
- it never opens the live database and never writes to the repository: it reads the repository
  under a shared lock, like a restore, and writes only into a scratch folder of its own
  (`<home>/drills/<job id>-<pid>-<random>`, see capsule.adapters.drill);
- the folder is deleted when the step ends, whether it proved its snapshot or not; the folder of
  a process that was killed is deleted by the next drill step on this machine, since its PID is
  in the name;
- an attempt starts from nothing: it proves the newest snapshot as it finds it then, which is what
  a drill is for, and its result names that snapshot.

A drill shares the machine with the till. Its work runs on a thread of its own whose nice value is
CAPSULE_NICE (on Linux a nice value belongs to a thread, set through its native id), so the rest of
a long-running process (the scheduler, the HTTP server, a backup's threads) keeps its priority. The
worker processes that thread starts inherit it.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from capsule.adapters.drill import (
    check_database_copy,
    check_images,
    newest_snapshot,
    restore_database_copy,
    scratch_folder,
)
from capsule.adapters.repository.lock import locked
from capsule.adapters.source_identity import this_host
from capsule.domain.drill_job import PROVE_DATABASE, PROVE_FILES
from capsule.orchestrator import faults
from capsule.orchestrator.usecases.repository import open_repository

if TYPE_CHECKING:
    from capsule.orchestrator.steps import StepContext, StepFunction

log = structlog.get_logger(__name__)

T = TypeVar("T")


def lower_this_thread(nice: int) -> int | None:
    """Give the calling thread the nice value `nice` unless it is already lower in priority;
    return the value it has then (None where threads have no nice value of their own)."""
    if not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) < nice:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError as e:  # a priority is a courtesy to the till, never a reason to fail the drill
        log.warning("could not lower the drill's priority", error=str(e))
        return None


def at_low_priority(nice: int, work: Callable[[], T]) -> T:
    """Run `work` on a new thread with the nice value `nice`, wait for it, return what it returned
    or raise what it raised. The calling thread keeps its own priority."""
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()  # the step's log fields (job_id, step) go along

    def run() -> None:
        lower_this_thread(nice)
        try:
            outcome["value"] = context.run(work)
        except BaseException as e:  # handed to the caller, which decides what it means
            outcome["error"] = e

    thread = threading.Thread(target=run, name="drill", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # in short waits, so that the step's time limit can still stop the caller
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def prove_database(ctx: StepContext) -> dict[str, Any]:
    return at_low_priority(ctx.settings.nice, lambda: _prove_database(ctx))


def prove_files(ctx: StepContext) -> dict[str, Any]:
    return at_low_priority(ctx.settings.nice, lambda: _prove_files(ctx))


def _prove_database(ctx: StepContext) -> dict[str, Any]:
    """Restore the newest database snapshot into scratch, verified; run SQLite's checks on it."""
    settings = ctx.settings
    started = time.monotonic()
    source = str(ctx.request["database_source"])
    repo = open_repository(settings)
    with locked(repo.backend, "drill", timeout=settings.lock_wait_seconds, reading=True):
        sid, manifest = newest_snapshot(repo, "database", this_host(), source)
        with scratch_folder(settings.home, ctx.job_id, settings.database) as folder:
            copy = restore_database_copy(repo, sid, manifest, folder, ctx.progress)
            faults.point("prove:database:restored")
            checked = check_database_copy(sid, copy)
            size = copy.stat().st_size
    result: dict[str, Any] = {
        "snapshot_id": sid,
        "kind": "database",
        "time": manifest.time.isoformat(),
        "bytes": size,
        "integrity_check": checked.integrity_check,
        "foreign_key_check": checked.foreign_key_check,
        "seconds": round(time.monotonic() - started, 3),
    }
    if checked.foreign_key_count:
        result["warnings"] = {"count": checked.foreign_key_count, "items": checked.foreign_key_rows}
    return result


def _prove_files(ctx: StepContext) -> dict[str, Any]:
    """Restore a random sample of the newest images snapshot into scratch and check each image."""
    settings = ctx.settings
    started = time.monotonic()
    source = str(ctx.request["files_source"])
    repo = open_repository(settings)
    with locked(repo.backend, "drill", timeout=settings.lock_wait_seconds, reading=True):
        sid, manifest = newest_snapshot(repo, "files", this_host(), source)
        with scratch_folder(settings.home, ctx.job_id, settings.database) as folder:
            checked = check_images(
                repo,
                sid,
                manifest,
                folder,
                at_least=int(ctx.request["sample_files"]),
                percent=float(ctx.request["sample_percent"]),
                progress=ctx.progress,
            )
            faults.point("prove:files:restored")
    return {
        "snapshot_id": sid,
        "kind": "files",
        "time": manifest.time.isoformat(),
        "bytes": checked.bytes,
        "images_total": checked.images_total,
        "images_sampled": checked.images_sampled,
        "images_checked": checked.images_checked,
        "seconds": round(time.monotonic() - started, 3),
    }


DRILL_STEPS: dict[tuple[str, str], StepFunction] = {
    ("drill", PROVE_DATABASE): prove_database,
    ("drill", PROVE_FILES): prove_files,
}
