"""Running a job from a command line: request it, let a worker run it, wait, report the outcome.

With no broker configured the worker is embedded: threads of this process run the steps, and the
recovery sweep at their start also finishes jobs an earlier process left unfinished. With
CAPSULE_BROKER_URL set, `capsule worker` processes run the steps and this only waits.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from capsule.domain.backup_job import BackupJob, committed_snapshot_ids
from capsule.domain.commands import CancelJob
from capsule.domain.errors import CapsuleError, Category, InvalidCommand
from capsule.domain.events import StepFailed, StepProgressed
from capsule.orchestrator.actors import Dispatcher, build
from capsule.orchestrator.logrepair import LogRepair, recover_if_damaged
from capsule.orchestrator.runtime import Loaded, Runtime, person
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.steps import clean_up

Progress = Callable[[int, int], None]


class JobFailed(CapsuleError):
    """Raised when a job ends without completing; carries the category of the error that ended it."""

    category = Category.UNKNOWN

    def __init__(self, message: str, category: Category = Category.UNKNOWN) -> None:
        super().__init__(message)
        self.category = category  # type: ignore[misc]  # this job's, not every JobFailed's


def failure(loaded: Loaded) -> JobFailed:
    state = loaded.state
    if state.status == "cancelled":
        return JobFailed(f"job {state.job_id} was cancelled")
    # A backup of kind `all` may have committed the database before the images failed: say so.
    saved = committed_snapshot_ids(state) if isinstance(state, BackupJob) else []
    kept = f" (snapshot {', '.join(s[:12] for s in saved)} was committed before that)" if saved else ""
    last = next((e for e in reversed(loaded.events) if isinstance(e, StepFailed)), None)
    if last is not None:
        return JobFailed(f"{last.error}{kept}", last.category)
    return JobFailed(f"{state.failure or f'job {state.job_id} failed'}{kept}")


@contextlib.contextmanager
def session(settings: Settings, progress: Progress | None = None) -> Iterator[tuple[Runtime, Dispatcher]]:
    """A runtime and dispatcher; with the embedded broker, a worker running for the block."""

    def on_progress(_job: str, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    runtime, dispatcher = build(settings, on_progress=on_progress)
    try:
        if settings.broker_url:
            yield runtime, dispatcher
        else:
            # Sweeping often: the job ahead of ours may finish in another process, whose message
            # releasing ours dies with that process's in-memory queue.
            with dispatcher.worker(threads=2, sweep_every=min(settings.sweep_seconds, 2.0)):
                yield runtime, dispatcher
    finally:
        runtime.close()


def run_job(
    settings: Settings,
    job_type: str,
    request: Callable[[Runtime], str],
    *,
    progress: Progress | None = None,
) -> Loaded:
    """Request a job, get it going and wait for it; raise JobFailed unless it completes.

    A damaged SQLite event log does not stop it: the log is set aside and a new one started first.
    """
    repaired = recover_if_damaged(settings, actor=person(), detected_by=job_type)
    if repaired is not None:
        sys.stderr.write(f"capsule: {went_on(repaired)}\n")
    with session(settings, progress) as (runtime, dispatcher):
        job_id = request(runtime)
        state = runtime.load(job_type, job_id).state
        if state.status == "queued":
            sys.stderr.write(
                f"capsule: another backup of the same source is running (job {state.queued_behind}); "
                f"job {job_id} waits for it\n"
            )
        dispatcher.enqueue_next(job_type, job_id)
        try:
            loaded = wait_with_progress(runtime, job_id, None if not settings.broker_url else progress)
        except KeyboardInterrupt:
            loaded = _interrupted(runtime, job_type, job_id)
    if loaded.state.status != "completed":
        raise failure(loaded)
    return loaded


def went_on(repair: LogRepair) -> str:
    """One line on a log that a backup or restore set aside before it went on."""
    aside = repair.set_aside_as[0] if repair.set_aside_as else "?"
    return (
        f"the event log {repair.log} was damaged ({repair.reason}); it is set aside as {aside} and a "
        f"new log goes on from here with the repository's snapshots ({repair.snapshots}) "
        "(`capsule audit` starts with the repair)"
    )


def _interrupted(runtime: Runtime, job_type: str, job_id: str) -> Loaded:
    """Ctrl-C: a backup resumes later; a restore is cancelled, unless it is already replacing the
    live database, which must finish (a second Ctrl-C leaves it to the next worker)."""
    if job_type == "backup":
        # The log already holds the job: stopping now loses nothing, and waiting for the running
        # step to finish would ignore the person who pressed Ctrl-C.
        _leave(f"interrupted; job {job_id} resumes at the next backup or `capsule worker --until-idle`")
    try:
        runtime.execute(
            job_type, job_id, lambda _: CancelJob(job_id=job_id, now=runtime.clock()), actor=person()
        )
    except InvalidCommand:
        sys.stderr.write(
            "capsule: the restore is being written into the live database; waiting for it to end\n"
        )
        try:
            return runtime.wait(job_id)
        except KeyboardInterrupt:
            _leave(f"interrupted; job {job_id} finishes at the next `capsule worker --until-idle`")
    clean_up(runtime.settings, job_id)
    _leave(f"interrupted; restore job {job_id} is cancelled")


def _leave(message: str) -> NoReturn:
    sys.stderr.write(f"capsule: {message}\n")
    sys.stderr.flush()
    os._exit(130)  # the running step's threads are not waited for: the log says where things stand


def wait_with_progress(runtime: Runtime, job_id: str, progress: Progress | None) -> Loaded:
    """Wait for the job; report the progress its heartbeats carry (workers in other processes)."""
    if progress is None:
        return runtime.wait(job_id)
    job_type = runtime.job_type_of(job_id)
    while True:
        try:
            return runtime.wait(job_id, timeout=1.0)
        except TimeoutError:
            loaded = runtime.load(job_type, job_id)
            beat = next((e for e in reversed(loaded.events) if isinstance(e, StepProgressed)), None)
            if beat is not None and beat.total:
                progress(beat.done, beat.total)
