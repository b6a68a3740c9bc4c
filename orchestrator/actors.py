"""Dramatiq actors, one per step, taking a job id only; the dispatcher that runs and chains them.

An actor reads the job's log, works out what is next, and does it only if it is its own step: a
duplicated, late or reordered message finds nothing to do. Retries are ours, not Dramatiq's (whose
default is 20 retries over a week): a failed attempt is an event, and the actor that recorded it
enqueues the next attempt with the policy's backoff as the message's delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.time_limit import TimeLimitExceeded

from capsule.adapters.errors import DiskFull, RepositoryLocked
from capsule.adapters.sqlite.sourcelock import SourceBusy
from capsule.domain.backup_job import UPLOAD_PREFIX, is_upload
from capsule.domain.commands import CompleteStep, ExpireLease, FailStep, RecordProgress, StartStep
from capsule.domain.errors import CapsuleError, Category, InvalidCommand
from capsule.domain.jobs import (
    FINISHED,
    ExpireStepLease,
    Finished,
    RunStep,
    WaitForJob,
    WaitUntil,
    current_step,
    next_action,
)
from capsule.orchestrator import collector, faults
from capsule.orchestrator.errors import OrchestratorError
from capsule.orchestrator.orphans import take_over_orphans
from capsule.orchestrator.runtime import SYSTEM, Loaded, Runtime, heartbeat
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.steps import STEPS, StepContext, StepRefused, clean_up, step_function

log = structlog.get_logger(__name__)

# How long an idle worker thread waits for a message before it looks whether it should stop: the
# embedded worker of a CLI command stops when the command is done, and waits up to this long.
WORKER_POLL_MS = 25

QUEUE = "capsule"
Progress = Callable[[str, int, int], None]


class BrokerSettingsError(CapsuleError):
    """Raised when CAPSULE_BROKER_URL names a broker Capsule cannot use."""

    category = Category.INVALID_INPUT


class StepAbandoned(Exception):
    """Raised inside a step whose attempt was taken over after its lease ran out."""


def make_broker(url: str | None) -> dramatiq.Broker:
    """The embedded in-process broker by default; Redis or RabbitMQ when the URL says so."""
    if not url:
        return StubBroker()
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415 - needs the redis client only then

        return RedisBroker(url=url)  # type: ignore[no-untyped-call]
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415 - needs pika only then

        return RabbitmqBroker(url=url)
    raise BrokerSettingsError(
        "CAPSULE_BROKER_URL must start with redis:// or amqp:// (or be unset for the embedded worker)"
    )


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may succeed. Our own errors say what to fix unless listed here;
    a step over its time limit is tried again, since a slow disk or a big database may explain it.

    A lock another live process holds is not tried again: the step has already waited
    CAPSULE_LOCK_WAIT_SECONDS for it, and trying again would only multiply that wait before the
    same answer (an overlapping cron run should learn at once that another backup runs)."""
    if isinstance(error, StepRefused | RepositoryLocked | SourceBusy):
        return False
    if isinstance(error, DiskFull | OrchestratorError):
        return True  # space may be freed; the log may come back
    return not isinstance(error, CapsuleError)


def category_of(error: BaseException) -> Category:
    """What kind of failure `error` is; a step over its time limit may find the disk less busy later."""
    if isinstance(error, CapsuleError):
        return error.category
    if isinstance(error, TimeLimitExceeded):
        return Category.UNAVAILABLE
    return Category.UNKNOWN


def describe(error: BaseException) -> str:
    if isinstance(error, CapsuleError):
        return str(error)
    if isinstance(error, TimeLimitExceeded):
        return "the step ran longer than CAPSULE_STEP_TIME_LIMIT_SECONDS allows"
    return f"{type(error).__name__}: {error}"


def actor_name(job_type: str, step: str) -> str:
    return f"{job_type}_{step}".replace(":", "_").replace("-", "_")


class Dispatcher:
    """Declares the actors on a broker and runs the steps they are asked to run."""

    def __init__(
        self, runtime: Runtime, broker: dramatiq.Broker, *, on_progress: Progress | None = None
    ) -> None:
        self.runtime = runtime
        self.broker = broker
        self.on_progress = on_progress
        self._running: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        # Held while a thread records a step started, so that `stop_starting` returns only once
        # none is halfway through: after it, the log shows every attempt this process will run.
        self._starting = threading.Lock()
        self._stopped_starting = False
        limit_ms = int(runtime.settings.step_time_limit_seconds * 1000)
        self.actors: dict[tuple[str, str], dramatiq.Actor[Any, Any]] = {}
        # One actor for every upload step: its message names the destination's step.
        for job_type, step in (*STEPS, ("backup", UPLOAD_PREFIX)):
            self.actors[(job_type, step)] = dramatiq.Actor(
                self._body(job_type, step),
                queue_name=QUEUE,
                actor_name=actor_name(job_type, step.rstrip(":")),
                priority=0,
                broker=broker,
                options={"max_retries": 0, "time_limit": limit_ms},
            )

    def _body(self, job_type: str, step: str) -> Callable[..., None]:
        def run(job_id: str, named: str | None = None) -> None:
            self.run(job_type, named or step, job_id)

        run.__name__ = actor_name(job_type, step.rstrip(":"))
        return run

    # ---- sending -------------------------------------------------------------------------

    def enqueue(self, job_type: str, job_id: str, step: str, *, delay_ms: int | None = None) -> None:
        upload = job_type == "backup" and is_upload(step)
        actor = self.actors.get((job_type, UPLOAD_PREFIX if upload else step))
        if actor is None:
            log.error("no actor for this step", job=job_id, step=step)
            return
        actor.send_with_options(args=(job_id, step) if upload else (job_id,), delay=delay_ms)

    def enqueue_next(self, job_type: str, job_id: str, *, from_sweep: bool = False) -> str | None:
        """Send the message the job needs now, if any; return what was done, for the sweep's log."""
        rt = self.runtime
        loaded = rt.load(job_type, job_id)
        if loaded.version == 0:
            return None
        action = next_action(loaded.state, rt.clock())
        if isinstance(action, RunStep | ExpireStepLease):
            self.enqueue(job_type, job_id, action.step)
            return action.step
        if isinstance(action, WaitUntil) and action.reason == "retry" and not from_sweep:
            delay = max(0, int((action.until - rt.clock()).total_seconds() * 1000))
            self.enqueue(job_type, job_id, action.step, delay_ms=delay)
            return action.step
        if isinstance(action, Finished):
            self._finished(loaded)
        return None

    def sweep(self) -> int:
        """Re-enqueue the next step of every unfinished job: the log is the truth, the queue a hint.
        A step whose process is gone from this host is taken over first, without waiting for its lease."""
        for gone in take_over_orphans(self.runtime):
            log.warning("took over a job whose process is gone", job=gone.job_id, pid=gone.pid)
        sent = 0
        for job_type, job_id, action in self.runtime.next_steps():
            if isinstance(action, WaitForJob):
                # The release may have been lost with the process that finished the job ahead.
                self._release(str(self.runtime.load(job_type, job_id).state.source))  # type: ignore[attr-defined]
            if isinstance(action, RunStep | ExpireStepLease) and self.enqueue_next(
                job_type, job_id, from_sweep=True
            ):
                sent += 1
        if sent:
            log.info("recovery sweep re-enqueued steps", steps=sent)
        return sent

    # ---- running -------------------------------------------------------------------------

    def stop_starting(self) -> None:
        """Let this process's threads start no more attempts; wait for one being recorded.

        Ctrl-C then reads what the log says this process runs and records it interrupted, without
        a thread starting the job's next step behind its back and leaving it running after exit."""
        with self._starting:
            self._stopped_starting = True

    def run(self, job_type: str, step: str, job_id: str) -> None:
        key = (job_id, step)
        with self._lock:
            if key in self._running:
                return  # this process runs it already; a duplicate message changes nothing
            self._running.add(key)
        structlog.contextvars.bind_contextvars(job_id=job_id, step=step)
        try:
            self._run(job_type, step, job_id)
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "step")
            with self._lock:
                self._running.discard(key)

    def _run(self, job_type: str, step: str, job_id: str) -> None:
        rt = self.runtime
        loaded = rt.load(job_type, job_id)
        if loaded.version == 0:
            log.warning("a message names a job the log does not know; ignored")
            return
        action = next_action(loaded.state, rt.clock())
        if isinstance(action, Finished):
            self._finished(loaded)
            return
        if isinstance(action, ExpireStepLease):
            rt.execute(
                job_type,
                job_id,
                lambda _: ExpireLease(
                    job_id=job_id, now=rt.clock(), step=action.step, attempt=action.attempt, policy=rt.policy
                ),
                actor=SYSTEM,
            )
            log.warning("a step's lease ran out; its worker is presumed dead", attempt=action.attempt)
            self.enqueue_next(job_type, job_id)
            return
        if not isinstance(action, RunStep):
            return  # queued, a live lease elsewhere, or a retry whose delayed message is on its way
        if action.step != step:
            self.enqueue(job_type, job_id, action.step)  # a stale hint: send the right one
            return
        attempt = action.attempt
        faults.point(f"{step}:starting")
        with self._starting:
            if self._stopped_starting:
                return  # the process is stopping (Ctrl-C): the job waits for the next worker
            try:
                loaded, new = rt.execute(
                    job_type,
                    job_id,
                    lambda _: StartStep(
                        job_id=job_id,
                        now=rt.clock(),
                        step=step,
                        attempt=attempt,
                        worker=rt.worker_id,
                        lease=rt.lease,
                    ),
                    actor=f"{SYSTEM}:worker:{rt.worker_id}",
                )
            except InvalidCommand:
                return  # another worker took this attempt first
        if not new:
            return
        faults.point(f"{step}:started")
        resume = action.resume_from
        self._attempt(loaded, step, attempt, None if resume is None else resume.model_dump(mode="json"))

    def _attempt(self, loaded: Loaded, step: str, attempt: int, resume_from: dict[str, Any] | None) -> None:
        rt = self.runtime
        job_type, job_id = loaded.job_type, loaded.state.job_id
        actor = f"{SYSTEM}:worker:{rt.worker_id}"
        last: dict[str, int | None] = {"done": 0, "total": None}

        def beat() -> bool:
            done = int(last["done"] or 0)
            after, _ = rt.execute(
                job_type,
                job_id,
                lambda _: RecordProgress(
                    job_id=job_id,
                    now=rt.clock(),
                    step=step,
                    attempt=attempt,
                    done=done,
                    total=last["total"],
                    lease=rt.lease,
                ),
                actor=actor,
            )
            mine = after.state.find_step(step)
            # A cancelled or interrupted job's attempt stops at its next report, releasing its locks.
            alive = after.state.status not in FINISHED and after.state.status != "interrupted"
            return alive and mine is not None and mine.status == "running" and mine.attempt == attempt

        with heartbeat(beat, rt.settings.heartbeat_seconds) as lost:

            def progress(done: int, total: int) -> None:
                last["done"], last["total"] = done, total
                if self.on_progress is not None:
                    self.on_progress(job_id, done, total)
                if lost.is_set():
                    raise StepAbandoned

            ctx = StepContext(
                settings=rt.settings,
                job_id=job_id,
                attempt=attempt,
                step=step,
                request=request_of(loaded),
                results={s.name: dict(s.result) for s in loaded.state.steps if s.result is not None},
                now=rt.clock(),
                progress=progress,
                resume_from=resume_from,
                runtime=rt,
            )
            started = time.monotonic()
            try:
                function = step_function(job_type, step)
                if function is None:
                    raise StepRefused(f"this Capsule does not know how to run step {step!r}; upgrade it")
                result = function(ctx)
            except StepAbandoned:
                log.warning("step abandoned: its job was cancelled or interrupted, or another worker took it")
                return
            except (Exception, TimeLimitExceeded) as e:
                log.warning("step failed", error=describe(e), transient=is_transient(e), attempt=attempt)
                self._fail(loaded, step, attempt, e)
                return
        faults.point(f"{step}:done")
        rt.execute(
            job_type,
            job_id,
            lambda _: CompleteStep(job_id=job_id, now=rt.clock(), step=step, attempt=attempt, result=result),
            actor=actor,
        )
        log.info("step completed", attempt=attempt, seconds=round(time.monotonic() - started, 3))
        faults.point(f"{step}:completed")
        if job_type == "backup" and not is_upload(step):
            after = current_step(rt.load(job_type, job_id).state)
            if after is not None and is_upload(after.name):
                # Committed: the backups queued behind this one need not wait for its uploads.
                self._release(str(loaded.state.source))  # type: ignore[attr-defined]
        self.enqueue_next(job_type, job_id)

    def _fail(self, loaded: Loaded, step: str, attempt: int, error: BaseException) -> None:
        rt = self.runtime
        job_type, job_id = loaded.job_type, loaded.state.job_id
        rt.execute(
            job_type,
            job_id,
            lambda _: FailStep(
                job_id=job_id,
                now=rt.clock(),
                step=step,
                attempt=attempt,
                error=describe(error),
                transient=is_transient(error),
                policy=rt.policy,
                category=category_of(error),
            ),
            actor=f"{SYSTEM}:worker:{rt.worker_id}",
        )
        self.enqueue_next(job_type, job_id)

    def _finished(self, loaded: Loaded) -> None:
        job_id = loaded.state.job_id
        if loaded.job_type == "restore":
            clean_up(self.runtime.settings, job_id)
        if loaded.job_type == "backup":
            self._release(str(loaded.state.source))  # type: ignore[attr-defined]

    def _release(self, source: str) -> None:
        for released in self.runtime.release_queued(source):
            log.info("queued backup released", job=released, source=source)
            self.enqueue_next("backup", released)

    # ---- workers -------------------------------------------------------------------------

    @contextmanager
    def worker(
        self, threads: int = 2, *, sweep_every: float | None = None, poll_ms: int = WORKER_POLL_MS
    ) -> Iterator[dramatiq.Worker]:
        """Run actors on threads of this process while the block runs; sweep at start (and every
        `sweep_every` seconds if given). An idle thread looks whether it should stop every
        `poll_ms`: a long-running service, which stops seldom, looks less often and sleeps more."""
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=poll_ms)
        worker.start()
        stop = threading.Event()
        sweeper = None
        try:
            self.sweep()
            if sweep_every:

                def periodic() -> None:
                    while not stop.wait(sweep_every):
                        try:
                            self.sweep()
                        except Exception as e:  # the next sweep tries again
                            log.warning("recovery sweep failed", error=describe(e))

                sweeper = threading.Thread(target=periodic, name="sweeper", daemon=True)
                sweeper.start()
            yield worker
        finally:
            stop.set()
            worker.stop()
            if sweeper is not None:
                sweeper.join(timeout=5)


def request_of(loaded: Loaded) -> dict[str, Any]:
    """What the job was asked to do, as its request event recorded it."""
    state: Any = loaded.state
    if loaded.job_type == "backup":
        return {"kind": state.kind, "source": state.source, "full": state.full, "tags": list(state.tags)}
    if loaded.job_type == "drill":
        return {
            "database_source": state.database_source,
            "files_source": state.files_source,
            "sample_files": state.sample_files,
            "sample_percent": state.sample_percent,
        }
    if loaded.job_type == "prune":
        return {"repack_unused_percent": state.repack_unused_percent}
    return {
        "snapshot_id": state.snapshot_id,
        "target": state.target,
        "force": state.force,
        "check": state.check,
        "include": list(state.include),
        "from_other_source": state.from_other_source,
        "special_bits": state.special_bits,
        "source": state.source,
    }


def build(settings: Settings, *, on_progress: Progress | None = None) -> tuple[Runtime, Dispatcher]:
    runtime = Runtime(settings)
    try:
        # A process that runs jobs appends: without the log's key it would fail every step, one by one.
        runtime.store.check_chain_key()
    except BaseException:
        runtime.close()
        raise
    dispatcher = Dispatcher(runtime, make_broker(settings.broker_url), on_progress=on_progress)
    collector.modules_loaded()  # a process that runs jobs has loaded what runs them
    return runtime, dispatcher
