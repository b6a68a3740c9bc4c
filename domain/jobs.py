"""What every kind of job shares: steps run as attempts under leases, retries, status and next action.

A job has a plan, an ordered list of step names fixed when it is requested. Step N may start only
once every step before it has completed. Each run of a step is an attempt, numbered from 1, held by
one worker under a lease that heartbeats extend. An attempt ends exactly once: completed, failed, or
lost when its lease expires; any later message about it decides nothing, since the orchestrator
delivers messages at least once, duplicated and out of order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from capsule.domain.commands import (
    CancelJob,
    CompleteStep,
    ExpireLease,
    FailStep,
    InterruptStep,
    PauseStep,
    RecordProgress,
    StartStep,
)
from capsule.domain.errors import InvalidCommand, InvalidEvent
from capsule.domain.events import (
    Event,
    JobCancelled,
    JobFailed,
    JsonObject,
    StepCompleted,
    StepFailed,
    StepInterrupted,
    StepLeaseExpired,
    StepProgressed,
    StepStarted,
)

JobStatus = Literal[
    "queued", "pending", "running", "retrying", "interrupted", "completed", "failed", "cancelled"
]
"""queued: waits for another job; pending: no step started yet; running: a step is running or the
next one is due; retrying: the last attempt failed or was lost and the next is not running yet;
interrupted: the last attempt was stopped (Ctrl-C, SIGTERM) or its process found gone, and the
next worker or backup of the same source goes on from there."""

StepStatus = Literal["pending", "running", "retrying", "completed", "failed"]

FINISHED: frozenset[JobStatus] = frozenset({"completed", "failed", "cancelled"})


class Progress(BaseModel):
    """How far a step got, as its last heartbeat said: where its next attempt can resume."""

    model_config = ConfigDict(frozen=True)

    attempt: int
    done: int
    total: int | None
    detail: JsonObject


class StepState(BaseModel):
    """One step of a job's plan and its latest attempt (0 when none has started)."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: StepStatus = "pending"
    attempt: int = 0
    worker: str | None = None
    lease_expires_at: datetime | None = None
    retry_at: datetime | None = None
    progress: Progress | None = None
    result: JsonObject | None = None
    error: str | None = None
    """Why the latest attempt ended without success, until the step completes."""


class JobState(BaseModel):
    """What every kind of job knows about itself; `status` is None until the job is requested."""

    model_config = ConfigDict(frozen=True)

    job_id: str = ""
    status: JobStatus | None = None
    steps: tuple[StepState, ...] = ()
    queued_behind: str | None = None
    failure: str | None = None

    @property
    def plan(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    def find_step(self, name: str) -> StepState | None:
        return next((step for step in self.steps if step.name == name), None)


S = TypeVar("S", bound=JobState)


def is_finished(state: JobState) -> bool:
    """Whether the job has completed, failed or been cancelled: nothing of it will run again."""
    return state.status in FINISHED


def current_step(state: JobState) -> StepState | None:
    """The first step of the plan that has not completed, or None once all have."""
    return next((step for step in state.steps if step.status != "completed"), None)


def resume_point(state: JobState, step: str) -> Progress | None:
    """The last progress any attempt of `step` reported, for the next attempt to resume from."""
    found = state.find_step(step)
    return None if found is None else found.progress


# What the orchestrator should do next


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunStep(_Action):
    """Start attempt `attempt` of `step` now, resuming from `resume_from` if there is one."""

    step: str
    attempt: int
    resume_from: Progress | None


class ExpireStepLease(_Action):
    """The running attempt's lease ran out: send ExpireLease for it, then run the next attempt."""

    step: str
    attempt: int


class WaitForJob(_Action):
    """Nothing to do until job `behind_job_id` finishes and this one is released."""

    behind_job_id: str


class WaitUntil(_Action):
    """Nothing to do before `until`: an attempt holds a live lease, or a retry is not due yet."""

    until: datetime
    reason: Literal["lease", "retry"]
    step: str
    attempt: int


class Finished(_Action):
    """The job is over; nothing of it will run again."""

    status: JobStatus


NextAction = RunStep | ExpireStepLease | WaitForJob | WaitUntil | Finished


def next_action(state: JobState, now: datetime) -> NextAction:
    """What should happen to the job at `now`, read from its state alone."""
    if state.status is None:
        raise InvalidCommand("there is no job to act on; request one first")
    if state.status in FINISHED:
        return Finished(status=state.status)
    if state.status == "queued":
        return WaitForJob(behind_job_id=state.queued_behind or "")
    step = current_step(state)
    if step is None:
        raise InvalidEvent(f"job {state.job_id!r} completed every step but its log does not say it finished")
    if step.status == "running":
        assert step.lease_expires_at is not None
        if step.lease_expires_at > now:
            return WaitUntil(
                until=step.lease_expires_at, reason="lease", step=step.name, attempt=step.attempt
            )
        return ExpireStepLease(step=step.name, attempt=step.attempt)
    if step.retry_at is not None and step.retry_at > now:
        return WaitUntil(until=step.retry_at, reason="retry", step=step.name, attempt=step.attempt + 1)
    return RunStep(step=step.name, attempt=step.attempt + 1, resume_from=step.progress)


# Deciding commands about steps, for every kind of job


@dataclass(frozen=True)
class JobRules(Generic[S]):
    """What differs between kinds of job when a step command is decided."""

    noun: str
    completed: Callable[[S], Event]
    """The event that finishes the job, given its state once the last step has completed."""
    failed: type[JobFailed]
    cancelled: type[JobCancelled]


JobCommand = (
    StartStep | RecordProgress | CompleteStep | FailStep | ExpireLease | InterruptStep | PauseStep | CancelJob
)


def require_job(state: JobState, job_id: str, noun: str) -> None:
    """Raise InvalidCommand unless `state` is the requested job `job_id`."""
    if state.status is None:
        raise InvalidCommand(f"there is no {noun} job {job_id!r}; request it first")
    if job_id != state.job_id:
        raise InvalidCommand(f"a command for job {job_id!r} was sent to {noun} job {state.job_id!r}")


def decide_job(state: S, command: JobCommand, rules: JobRules[S]) -> list[Event]:
    """The events a step command or a cancellation records on an existing job."""
    require_job(state, command.job_id, rules.noun)
    match command:
        case StartStep():
            return _start(state, command, rules.noun)
        case RecordProgress():
            return _progress(state, command, rules.noun)
        case CompleteStep():
            return _complete(state, command, rules)
        case FailStep():
            return _fail(state, command, rules)
        case ExpireLease():
            return _expire(state, command, rules)
        case InterruptStep():
            return _interrupt(state, command, rules.noun)
        case PauseStep():
            return _pause(state, command, rules.noun)
        case CancelJob():
            return _cancel(state, rules)


def _known_step(state: JobState, name: str, noun: str) -> StepState:
    step = state.find_step(name)
    if step is None:
        plan = ", ".join(state.plan)
        raise InvalidCommand(f"{noun} job {state.job_id!r} has no step {name!r}; its steps are {plan}")
    return step


def _start(state: JobState, c: StartStep, noun: str) -> list[Event]:
    step = _known_step(state, c.step, noun)
    if c.attempt < step.attempt:
        return []
    if c.attempt == step.attempt:
        if c.worker != step.worker:
            raise InvalidCommand(
                f"attempt {c.attempt} of step {c.step!r} belongs to worker {step.worker!r}; "
                f"worker {c.worker!r} must not run it too"
            )
        return []
    if state.status in FINISHED:
        raise InvalidCommand(f"{noun} job {state.job_id!r} is {state.status}; none of its steps may start")
    if state.status == "queued":
        raise InvalidCommand(
            f"{noun} job {state.job_id!r} is queued behind job {state.queued_behind!r}; "
            "it may start once that job finishes and this one is released"
        )
    if step.status == "completed":
        raise InvalidCommand(f"step {c.step!r} has already completed; it does not run again")
    blocking = current_step(state)
    if blocking is not None and blocking.name != c.step:
        raise InvalidCommand(f"step {c.step!r} cannot start before step {blocking.name!r} has completed")
    if step.status == "running":
        raise InvalidCommand(
            f"attempt {step.attempt} of step {c.step!r} is still running on worker {step.worker!r}; "
            "expire its lease before starting another attempt"
        )
    if c.attempt != step.attempt + 1:
        raise InvalidCommand(
            f"the next attempt of step {c.step!r} is number {step.attempt + 1}, not {c.attempt}"
        )
    return [
        StepStarted(
            job_id=state.job_id,
            step=c.step,
            attempt=c.attempt,
            worker=c.worker,
            lease_expires_at=c.now + c.lease,
        )
    ]


def _live_attempt(state: JobState, name: str, attempt: int, noun: str) -> StepState | None:
    """The step if `attempt` is its running attempt; None if that attempt is over (a late message)."""
    step = _known_step(state, name, noun)
    if attempt > step.attempt:
        raise InvalidCommand(f"attempt {attempt} of step {name!r} was never started; start it first")
    if attempt < step.attempt or step.status != "running" or state.status in FINISHED:
        return None
    return step


def _progress(state: JobState, c: RecordProgress, noun: str) -> list[Event]:
    step = _live_attempt(state, c.step, c.attempt, noun)
    if step is None:
        return []
    expires = c.now + c.lease
    # A heartbeat that does not push the lease further out was sent before one already recorded
    # (or is that one again); recording it would move the resume point and the lease backwards.
    if step.lease_expires_at is not None and expires <= step.lease_expires_at:
        return []
    return [
        StepProgressed(
            job_id=state.job_id,
            step=c.step,
            attempt=c.attempt,
            done=c.done,
            total=c.total,
            detail=c.detail,
            lease_expires_at=expires,
        )
    ]


def _complete(state: S, c: CompleteStep, rules: JobRules[S]) -> list[Event]:
    if _live_attempt(state, c.step, c.attempt, rules.noun) is None:
        return []
    completed = StepCompleted(job_id=state.job_id, step=c.step, attempt=c.attempt, result=c.result)
    after = evolve_job(state, completed, rules)
    if current_step(after) is None:
        return [completed, rules.completed(after)]
    return [completed]


def _fail(state: S, c: FailStep, rules: JobRules[S]) -> list[Event]:
    if _live_attempt(state, c.step, c.attempt, rules.noun) is None:
        return []
    retry = c.transient and c.policy.allows_another_after(c.attempt)
    failed = StepFailed(
        job_id=state.job_id,
        step=c.step,
        attempt=c.attempt,
        error=c.error,
        transient=c.transient,
        retry_at=c.now + c.policy.backoff(c.attempt) if retry else None,
        category=c.category,
    )
    if retry:
        return [failed]
    if c.transient:
        reason = f"step {c.step!r} failed {c.attempt} times, the last time with: {c.error}"
    else:
        reason = f"step {c.step!r} failed with an error that retrying cannot fix: {c.error}"
    return [failed, rules.failed(job_id=state.job_id, step=c.step, reason=reason)]


def _expire(state: S, c: ExpireLease, rules: JobRules[S]) -> list[Event]:
    step = _live_attempt(state, c.step, c.attempt, rules.noun)
    if step is None or (step.lease_expires_at is not None and step.lease_expires_at > c.now):
        return []
    expired = StepLeaseExpired(job_id=state.job_id, step=c.step, attempt=c.attempt)
    if c.policy.allows_another_after(c.attempt):
        return [expired]
    reason = (
        f"the worker running step {c.step!r} stopped reporting {c.attempt} times; "
        "check that the workers are running and look in their logs for why they stopped"
    )
    return [expired, rules.failed(job_id=state.job_id, step=c.step, reason=reason)]


def _interrupt(state: JobState, c: InterruptStep, noun: str) -> list[Event]:
    if _live_attempt(state, c.step, c.attempt, noun) is None:
        return []
    return [StepInterrupted(job_id=state.job_id, step=c.step, attempt=c.attempt, reason=c.reason)]


def _pause(state: JobState, c: PauseStep, noun: str) -> list[Event]:
    step = _known_step(state, c.step, noun)
    if c.attempt > step.attempt:
        raise InvalidCommand(f"attempt {c.attempt} of step {c.step!r} was never started; start it first")
    current = current_step(state)
    if state.status not in ("pending", "running", "retrying") or current is None or current.name != c.step:
        return []  # finished, queued, interrupted already, or past this step
    if step.status == "running" or c.attempt != step.attempt:
        return []  # an attempt has started since: `InterruptStep` stops it
    return [StepInterrupted(job_id=state.job_id, step=c.step, attempt=c.attempt, reason=c.reason)]


def _cancel(state: S, rules: JobRules[S]) -> list[Event]:
    if state.status == "cancelled":
        return []
    if state.status in FINISHED:
        raise InvalidCommand(
            f"{rules.noun} job {state.job_id!r} has already {state.status}; there is nothing to cancel"
        )
    return [rules.cancelled(job_id=state.job_id)]


# Applying the events every kind of job shares

LOST_WORKER = "the worker stopped reporting before its lease ran out"


def update_job(state: S, event: Event, **changes: Any) -> S:
    """`state` with `changes`, once `event` is known to follow the job's request in its own log."""
    if state.status is None:
        raise InvalidEvent(f"the log of job {event.job_id!r} does not begin with the job's request")
    if event.job_id != state.job_id:
        raise InvalidEvent(f"an event of job {event.job_id!r} is in the log of job {state.job_id!r}")
    return state.model_copy(update=changes) if changes else state


def evolve_job(state: S, event: Event, rules: JobRules[S]) -> S:
    """Apply a step event, or the job's failure or cancellation, to any kind of job."""
    state = update_job(state, event)
    job: dict[str, Any] = {}
    match event:
        case StepStarted():
            job = {"status": "running"}
            step = {"status": "running", "attempt": event.attempt, "worker": event.worker, "retry_at": None}
            step["lease_expires_at"] = event.lease_expires_at
        case StepProgressed():
            progress = Progress(
                attempt=event.attempt, done=event.done, total=event.total, detail=event.detail
            )
            step = {"progress": progress, "lease_expires_at": event.lease_expires_at}
        case StepCompleted():
            step = {"status": "completed", "result": event.result, "lease_expires_at": None, "error": None}
        case StepFailed():
            # Without a retry, the job's failure event follows in the same append and sets its status.
            if event.retry_at is not None:
                job = {"status": "retrying"}
            step = {"status": "retrying" if event.retry_at else "failed", "error": event.error}
            step |= {"lease_expires_at": None, "retry_at": event.retry_at}
        case StepInterrupted():
            job = {"status": "interrupted"}
            # Attempt 0: the job was stopped before the step's first attempt (`PauseStep`).
            step = {"status": "retrying" if event.attempt else "pending", "error": event.reason}
            step |= {"lease_expires_at": None, "retry_at": None}
        case StepLeaseExpired():
            job = {"status": "retrying"}
            step = {"status": "retrying", "error": LOST_WORKER, "lease_expires_at": None, "retry_at": None}
        case JobFailed() if isinstance(event, rules.failed):
            job = {"status": "failed", "failure": event.reason}
            step = {"status": "failed"}
        case JobCancelled() if isinstance(event, rules.cancelled):
            return state.model_copy(update={"status": "cancelled"})
        case _:
            name = type(event).__name__
            raise InvalidEvent(
                f"a {name} event does not belong in the log of {rules.noun} job {state.job_id!r}"
            )
    name = event.step
    if state.find_step(name) is None:
        raise InvalidEvent(f"job {state.job_id!r} has an event about step {name!r}, which is not in its plan")
    steps = tuple(s.model_copy(update=step) if s.name == name else s for s in state.steps)
    return state.model_copy(update={"steps": steps, **job})
