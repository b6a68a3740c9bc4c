"""What each step of a job does, as plain functions the actors call: the engine, wired to settings.

Every step is safe to run again after its process died at any instant; the module that holds a
job type's steps opens by saying why each of its steps is:
- a backup's `store`, `commit` and `upload:<destination>`: `orchestrator/backupsteps.py`;
- a restore's `restore` (into a folder), `stage` and `apply` (into the live database):
  `orchestrator/restoresteps.py`;
- a restore drill's: `orchestrator/drillsteps.py`; a prune's: `orchestrator/prunesteps.py`.

Each of those modules is loaded the first time a job runs one of its steps, and each loads the
engine its steps drive: a restore's process never imports the backup's tree walker and chunker,
nor a backup's the restore's writers, nor either the drill's or the prune's code.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.lock import read_locks, stop_locking
from capsule.domain import drill_job, prune_job
from capsule.domain.backup_job import COMMIT, STORE, is_upload
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.manifest import SnapshotKind
from capsule.domain.restore_job import APPLY, RESTORE, STAGE
from capsule.orchestrator import faults
from capsule.orchestrator.settings import Settings

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


def halfway(ctx: StepContext, name: str) -> Progress:
    """The step's progress, with the fault point `<name>:halfway` once half the work is done."""

    def progress(done: int, total: int) -> None:
        ctx.progress(done, total)
        if done * 2 >= total:
            faults.point(f"{name}:halfway")

    return progress


def staged_path(settings: Settings, job_id: str) -> Path:
    """Where restore job `job_id` stages the database it will put in place of the live one."""
    return settings.staging / f"restore-{job_id}-{settings.database.name}"


def remove_restore_leftovers(folder: Path, name: str) -> None:
    """Temporary files an attempt killed while writing `name` left behind (restore writes
    `.<name>.capsule-restore-<random>` and renames it only once checked)."""
    for leftover in folder.glob(f".{name}.capsule-restore-*"):
        leftover.unlink(missing_ok=True)


def release_own_locks(settings: Settings, *, exiting: bool = False) -> None:
    """Remove the repository locks this process holds, for a process about to exit without
    unwinding its steps (Ctrl-C, SIGTERM). Best effort: a lock left behind is stale once this
    process is gone, and the next process on this host removes it. `exiting`: the process ends
    next, so no thread of it takes a lock from now on (`stop_locking`), and none taken while this
    lists them is left behind."""
    if exiting:
        stop_locking()
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
    # Only a restore into the live database leaves them: the other jobs never load the safety copies' code.
    from capsule.orchestrator.safety import remove_pending, safety_path  # noqa: PLC0415

    staged = staged_path(settings, job_id)
    staged.unlink(missing_ok=True)
    remove_restore_leftovers(staged.parent, staged.name)
    remove_pending(safety_path(settings, job_id))


def _loaded_when_run(module: str, table: str, job_type: str, step: str) -> StepFunction:
    """The step `step` of `table` in `module`, whose code is loaded the first time a job runs it:
    a restore's process never loads the backup's code, nor a backup's the restore's, the drill's
    or the prune's, nor what they need."""

    def run(ctx: StepContext) -> dict[str, Any]:
        steps: dict[tuple[str, str], StepFunction] = getattr(importlib.import_module(module), table)
        return steps[(job_type, step)](ctx)

    run.__name__ = run.__qualname__ = f"{job_type}_{step}"
    return run


BACKUP_PLAN: tuple[str, ...] = tuple(
    f"{step}{suffix}" for step in (STORE, COMMIT) for suffix in ("", *(f":{k}" for k in SNAPSHOT_KINDS))
)
"""A backup's steps but its uploads: `store` and `commit`, of one kind or of each of `all`'s."""

ELSEWHERE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "backup": ("capsule.orchestrator.backupsteps", "BACKUP_STEPS", BACKUP_PLAN),
    "restore": ("capsule.orchestrator.restoresteps", "RESTORE_STEPS", (RESTORE, STAGE, APPLY)),
    "drill": ("capsule.orchestrator.drillsteps", "DRILL_STEPS", drill_job.PLAN),
    "prune": ("capsule.orchestrator.prunesteps", "PRUNE_STEPS", prune_job.PLAN),
}
"""Each job type's steps live in a module of their own: the module, its table of steps, their names."""

STEPS: dict[tuple[str, str], StepFunction] = {
    (job_type, step): _loaded_when_run(module, table, job_type, step)
    for job_type, (module, table, names) in ELSEWHERE.items()
    for step in names
}


def _upload(ctx: StepContext) -> dict[str, Any]:
    from capsule.orchestrator.backupsteps import backup_upload  # noqa: PLC0415 - loaded when run

    return backup_upload(ctx)


def step_function(job_type: str, step: str) -> StepFunction | None:
    """What runs `step` of a job of `job_type`; an upload step names its destination."""
    if job_type == "backup" and is_upload(step):
        return _upload
    return STEPS.get((job_type, step))
