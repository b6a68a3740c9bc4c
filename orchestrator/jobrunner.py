"""Running a job from a command line: request it, let a worker run it, wait, report the outcome.

With no broker configured the worker is embedded: threads of this process run the steps, and the
recovery sweep at their start also finishes jobs an earlier process left unfinished. With
CAPSULE_BROKER_URL set, `capsule worker` processes run the steps and this only waits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from capsule.adapters.partials import stop_partials
from capsule.domain.backup_job import BackupJob, committed_snapshot_ids, is_upload
from capsule.domain.commands import CancelJob, Command, InterruptStep, PauseStep
from capsule.domain.errors import CapsuleError, Category, InvalidCommand
from capsule.domain.events import StepFailed, StepProgressed
from capsule.domain.jobs import FINISHED, RunStep, current_step, next_action
from capsule.domain.restore_job import IN_PLACE
from capsule.orchestrator.actors import Dispatcher, build
from capsule.orchestrator.logrepair import LogRepair, recover_if_damaged
from capsule.orchestrator.orphans import interrupt_step, owner_gone, take_over_orphans, worker_host_pid
from capsule.orchestrator.runtime import JOB_TYPES, Loaded, Runtime, person
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.steps import clean_up, release_own_locks

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
def session(
    settings: Settings, progress: Progress | None = None, *, before: Callable[[Runtime], None] | None = None
) -> Iterator[tuple[Runtime, Dispatcher]]:
    """A runtime and dispatcher; with the embedded broker, a worker running for the block.
    `before` runs first, before any worker of this process may touch a job."""

    def on_progress(_job: str, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    runtime, dispatcher = build(settings, on_progress=on_progress)
    try:
        if before is not None:
            before(runtime)
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
    A job of this machine whose process is gone is taken over first, and said so. Behind another
    backup of the same source held by a live process, it waits CAPSULE_LOCK_WAIT_SECONDS at most.
    On Ctrl-C or SIGTERM it releases what it holds and exits 130 (see `_interrupted`).
    """
    repaired = recover_if_damaged(settings, actor=person(), detected_by=job_type)
    if repaired is not None:
        sys.stderr.write(f"capsule: {went_on(repaired)}\n")
    with session(settings, progress, before=_take_over) as (runtime, dispatcher):
        job_id = ""
        try:
            job_id = request(runtime)
            dispatcher.enqueue_next(job_type, job_id)
            _wait_in_queue(runtime, job_id)
            loaded = wait_with_progress(runtime, job_id, None if not settings.broker_url else progress)
        except KeyboardInterrupt as e:
            if not job_id:
                raise
            loaded = _interrupted(runtime, dispatcher, job_type, job_id, signal_name(e))
    if loaded.state.status != "completed":
        raise failure(loaded)
    return loaded


def _take_over(runtime: Runtime) -> None:
    for gone in take_over_orphans(runtime, actor=person()):
        sys.stderr.write(f"capsule: taking over {gone.describe()}\n")


def continue_interrupted_backup(runtime: Runtime, source: str, kind: str, full: bool) -> str | None:
    """The id of an unfinished backup of `source` asked with the same kind and options that no
    process is running (interrupted, or stopped between two steps), said so: the backup asked for
    now finishes that one instead of queueing behind it, and one snapshot is made."""
    from capsule.orchestrator import projections  # noqa: PLC0415

    job_id = projections.active_backup_for_source(runtime.engine, source)
    if job_id is None:
        return None
    state = runtime.load("backup", job_id).state
    if not isinstance(state, BackupJob):
        return None
    idle = isinstance(next_action(state, runtime.clock()), RunStep) and state.status != "pending"
    step = current_step(state)
    # This process's own worker sweeps at start, and may already have taken up the job that was
    # just taken over: that is finishing it too.
    mine = step is not None and step.status == "running" and step.worker == runtime.worker_id
    if state.status != "interrupted" and not idle and not mine:
        return None
    if idle and state.status != "interrupted" and _on_its_way(state, runtime.worker_id):
        return None  # its process is alive, between two steps: queue behind it
    if (state.kind, state.full) != (kind, full):
        return None
    if step is not None and is_upload(step.name):
        # Its snapshots are committed: finishing it would give the owner no new snapshot. Its
        # uploads go on beside this backup (this process's worker sweeps them up), and this
        # backup's own uploads wait for them (steps.backup_upload).
        return None
    reason = step.error if step is not None and step.error else ""
    if state.status not in ("interrupted", "running"):
        said = "was left unfinished" + (f" ({reason})" if reason else "")
    elif reason.startswith("interrupted"):
        said = f"was {reason}"  # `was interrupted (SIGINT)`
    else:
        said = "was interrupted" + (f" ({reason})" if reason else "")
    sys.stderr.write(f"capsule: backup job {job_id} {said}; finishing it now\n")
    return job_id


def _wait_in_queue(runtime: Runtime, job_id: str) -> None:
    """While the job is queued behind a backup that a live process runs, wait for that one up to
    CAPSULE_LOCK_WAIT_SECONDS; then cancel this job and fail naming the other (category LOCKED)."""
    job_type = runtime.job_type_of(job_id)
    state = runtime.load(job_type, job_id).state
    if state.status != "queued":
        return
    ahead = state.queued_behind or ""
    wait = f"{runtime.settings.lock_wait_seconds:g}"
    sys.stderr.write(
        f"capsule: another backup of the same source is running (job {ahead}); "
        f"waiting up to {wait} s for it\n"
    )
    deadline = time.monotonic() + runtime.settings.lock_wait_seconds
    while True:
        state = runtime.load(job_type, job_id).state
        if state.status != "queued":
            return
        holder = _held_elsewhere(runtime, state.queued_behind or "")
        if holder is None:
            deadline = time.monotonic() + runtime.settings.lock_wait_seconds
        elif time.monotonic() >= deadline:
            runtime.execute(
                job_type, job_id, lambda _: CancelJob(job_id=job_id, now=runtime.clock()), actor=person()
            )
            raise JobFailed(
                f"another backup of the same source is running: {holder}; this one (job {job_id}) "
                "is cancelled. Wait for it to finish, or `capsule cancel` it if it is stuck",
                Category.LOCKED,
            )
        time.sleep(0.25)


def _on_its_way(state: BackupJob, me: str) -> bool:
    """Whether the worker that completed the job's last step is another process that may still be
    alive (on this host and running, or on another host): it is then about to start the next step,
    not stopped between two. A process on this host that is gone left the job to whoever comes."""
    done = [s for s in state.steps if s.status == "completed" and s.worker]
    if not done or done[-1].worker == me:
        return False
    return worker_host_pid(done[-1].worker) is not None and owner_gone(done[-1].worker) is None


def _held_elsewhere(runtime: Runtime, job_id: str) -> str | None:
    """`job <id> (PID n on host, since <local time>)` if a live process of another worker runs
    the job's step; None if no one runs it or this process does (then waiting is waiting for us)."""
    try:
        job_type = runtime.job_type_of(job_id)
    except CapsuleError:
        return None
    state = runtime.load(job_type, job_id).state
    step = current_step(state)
    if state.status in FINISHED or step is None or step.status != "running" or step.worker is None:
        return None
    if step.worker == runtime.worker_id:
        return None
    found = worker_host_pid(step.worker)
    where = f"PID {found[1]} on {found[0]}" if found else f"worker {step.worker}"
    started = [
        e.recorded_at
        for e in runtime.store.read_stream(JOB_TYPES[job_type].stream_id(job_id))
        if e.type == "StepStarted"
    ]
    since = f", since {started[-1].astimezone():%Y-%m-%d %H:%M:%S %Z}" if started else ""
    return f"job {job_id} ({where}{since})"


def went_on(repair: LogRepair) -> str:
    """One line on a log that a backup or restore set aside before it went on."""
    aside = repair.set_aside_as[0] if repair.set_aside_as else "?"
    return (
        f"the event log {repair.log} was damaged ({repair.reason}); it is set aside as {aside} and a "
        f"new log goes on from here with the repository's snapshots ({repair.snapshots}) "
        "(`capsule audit` starts with the repair)"
    )


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """SIGTERM when the CLI's handler raised it for that signal (api/common.py), else SIGINT."""
    return "SIGTERM" if interrupt.args == ("SIGTERM",) else "SIGINT"


def _interrupted(runtime: Runtime, dispatcher: Dispatcher, job_type: str, job_id: str, signal: str) -> Loaded:
    """Ctrl-C or SIGTERM: record it, release this process's locks and temporary files, exit 130.

    A backup is paused: its running attempt is recorded as interrupted and the next `capsule
    backup` of the same kind finishes it (so does `capsule worker`); one still queued behind
    another has done nothing and is cancelled. A restore is cancelled and its temporary files
    removed, unless it is already replacing the live database, which must finish (a second
    Ctrl-C leaves it to the next worker). A drill is cancelled and this process's copies deleted.
    A prune is paused as a backup is: the next `capsule prune` joins it and finishes it."""
    settings = runtime.settings
    if job_type == "backup":
        state = runtime.load(job_type, job_id).state
        if state.status == "queued":
            runtime.execute(
                job_type, job_id, lambda _: CancelJob(job_id=job_id, now=runtime.clock()), actor=person()
            )
            _leave(settings, f"interrupted ({signal}); backup job {job_id} had not started and is cancelled")
        _pause(runtime, dispatcher, job_type, job_id, signal)
        kind = state.kind if isinstance(state, BackupJob) else "database"
        again = "capsule backup" if kind == "database" else f"capsule backup --kind {kind}"
        # The log already holds the job: stopping now loses nothing, and waiting for the running
        # step to finish would ignore the person who pressed Ctrl-C.
        _leave(
            settings,
            f"interrupted ({signal}); backup job {job_id} is paused and its locks released: "
            f"run `{again}` again to finish it, or `capsule cancel {job_id}`",
        )
    if job_type == "prune":
        _pause(runtime, dispatcher, job_type, job_id, signal)
        _leave(
            settings,
            f"interrupted ({signal}); prune job {job_id} is paused and its locks released: run "
            f"`capsule prune` again to finish it, or `capsule cancel {job_id}`",
        )
    if job_type == "drill":
        from capsule.adapters.drill import remove_own_scratch  # noqa: PLC0415 - a drill's alone

        runtime.execute(
            job_type, job_id, lambda _: CancelJob(job_id=job_id, now=runtime.clock()), actor=person()
        )
        stop_partials()  # before the copies go: none is made after
        remove_own_scratch(settings.home)
        _leave(settings, f"interrupted ({signal}); drill job {job_id} is cancelled and its copies removed")
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
            _leave(settings, f"interrupted; job {job_id} finishes at the next `capsule worker --until-idle`")
    # No temporary file is made from here on, and those this process made are gone; the folder is
    # then searched for those its restore workers made. Not before: a restore replacing the live
    # database above must be able to finish.
    stop_partials()
    clean_up(settings, job_id)
    target = getattr(runtime.load(job_type, job_id).state, "target", None)
    if target and target != IN_PLACE:
        from capsule.adapters.files.restore import remove_partial_writes  # noqa: PLC0415 - a restore's alone

        remove_partial_writes(Path(target), owner="mine")
    _leave(
        settings, f"interrupted ({signal}); restore job {job_id} is cancelled and its temporary files removed"
    )


def _pause(runtime: Runtime, dispatcher: Dispatcher, job_type: str, job_id: str, signal: str) -> None:
    """Record the job interrupted, as the line printed next says it is paused, wherever it stands.

    This process's worker first stops starting steps. Then the attempt it runs is interrupted;
    with no attempt running (Ctrl-C between two steps, or before a retry), the job is paused
    before its next one. With CAPSULE_BROKER_URL the steps are the workers': nothing is recorded
    but an attempt this process runs (none)."""
    embedded = not runtime.settings.broker_url
    if embedded:
        dispatcher.stop_starting()
    reason = f"interrupted ({signal})"

    def command(loaded: Loaded) -> Command | None:
        step = current_step(loaded.state)
        if step is None:
            return None
        now = runtime.clock()
        if step.status == "running":
            if step.worker != runtime.worker_id:
                return None
            return InterruptStep(job_id=job_id, now=now, step=step.name, attempt=step.attempt, reason=reason)
        if not embedded:
            return None
        return PauseStep(job_id=job_id, now=now, step=step.name, attempt=step.attempt, reason=reason)

    runtime.execute(job_type, job_id, command, actor=person())


def interrupt_own_steps(runtime: Runtime, signal: str) -> list[str]:
    """Record as interrupted every running step this process's worker holds; `<type> job <id>` of each."""
    paused = []
    for job_id, job_type in runtime.unfinished():
        step = current_step(runtime.load(job_type, job_id).state)
        if step is None or step.status != "running" or step.worker != runtime.worker_id:
            continue
        if interrupt_step(runtime, job_type, job_id, step, reason=f"interrupted ({signal})", actor=person()):
            paused.append(f"{job_type} job {job_id}")
    return paused


def _leave(settings: Settings, message: str) -> NoReturn:
    stop_partials()
    release_own_locks(settings, exiting=True)
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
