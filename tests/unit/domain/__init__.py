"""Given events / when command / then events: the shape every decider test takes here.

    given(requested(), started(STORE)).when(complete(STORE)).then(completed(STORE))

The builders below make the events and commands of one job at times counted in seconds from T0,
so a test says only what matters to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest

from capsule.domain.commands import (
    DEFAULT_LEASE,
    CancelJob,
    CompleteStep,
    ExpireLease,
    FailStep,
    RecordProgress,
    ReleaseBackup,
    RequestBackup,
    RequestRestore,
    RetryPolicy,
    StartStep,
)
from capsule.domain.errors import Category, InvalidCommand
from capsule.domain.events import (
    BackupRequested,
    Event,
    RestoreRequested,
    StepCompleted,
    StepFailed,
    StepLeaseExpired,
    StepProgressed,
    StepStarted,
    event_payload,
    event_type,
    load_event,
)

JOB = "job-1"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LEASE = DEFAULT_LEASE


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Then:
    decide: Callable[[Any, Any], list[Event]]
    replay: Callable[[Iterable[Event]], Any]
    history: tuple[Event, ...]
    command: Any

    def then(self, *expected: Event) -> None:
        state = self.replay(self.history)
        decided = self.decide(state, self.command)
        assert decided == list(expected)
        # What was decided must also apply, and survive the log's JSON, exactly as it would in production.
        stored = [load_event(event_type(e), event_payload(e)) for e in self.history + tuple(decided)]
        assert stored == [*self.history, *decided]
        self.replay(stored)

    def refused(self, match: str) -> None:
        with pytest.raises(InvalidCommand, match=match):
            self.decide(self.replay(self.history), self.command)


@dataclass(frozen=True)
class When:
    decide: Callable[[Any, Any], list[Event]]
    replay: Callable[[Iterable[Event]], Any]
    history: tuple[Event, ...]

    def when(self, command: Any) -> Then:
        return Then(self.decide, self.replay, self.history, command)

    @property
    def state(self) -> Any:
        return self.replay(self.history)


def scenarios(aggregate: ModuleType) -> Callable[..., When]:
    """`given(*events)` for the aggregate module `aggregate` (its `decide` and `replay`)."""

    def given(*events: Event) -> When:
        return When(aggregate.decide, aggregate.replay, events)

    return given


def quoted(text: str) -> str:
    """A regex matching `text` literally, for `refused(match=...)`."""
    return re.escape(text)


# Events


def backup_requested(
    plan: Sequence[str] = ("store", "commit"), *, source: str = "data/pos.db", job_id: str = JOB
) -> BackupRequested:
    return BackupRequested(
        job_id=job_id, kind="database", source=source, full=False, tags=(), plan=tuple(plan)
    )


def restore_requested(target: str = "restored", *, check: bool = False) -> RestoreRequested:
    plan = ("stage", "apply") if target == "in-place" else ("restore",)
    return RestoreRequested(
        job_id=JOB, snapshot_id="snap-1", target=target, force=False, check=check, plan=plan
    )


def started(step: str, attempt: int = 1, *, worker: str = "w1", t: float = 0) -> StepStarted:
    return StepStarted(job_id=JOB, step=step, attempt=attempt, worker=worker, lease_expires_at=at(t) + LEASE)


def progressed(
    step: str, attempt: int = 1, *, done: int = 1, total: int | None = 10, t: float = 1, **detail: Any
) -> StepProgressed:
    return StepProgressed(
        job_id=JOB,
        step=step,
        attempt=attempt,
        done=done,
        total=total,
        detail=detail,
        lease_expires_at=at(t) + LEASE,
    )


def completed(step: str, attempt: int = 1, **result: Any) -> StepCompleted:
    return StepCompleted(job_id=JOB, step=step, attempt=attempt, result=result)


def failed(
    step: str, attempt: int = 1, *, error: str = "boom", transient: bool = True, retry_at: datetime | None
) -> StepFailed:
    return StepFailed(
        job_id=JOB,
        step=step,
        attempt=attempt,
        error=error,
        transient=transient,
        retry_at=retry_at,
        category=Category.UNKNOWN,
    )


def lease_expired(step: str, attempt: int = 1) -> StepLeaseExpired:
    return StepLeaseExpired(job_id=JOB, step=step, attempt=attempt)


# Commands


def request_backup(
    *, active_job_id: str | None = None, source: str = "data/pos.db", t: float = 0
) -> RequestBackup:
    return RequestBackup(job_id=JOB, now=at(t), source=source, active_job_id=active_job_id)


def request_restore(target: str = "restored", *, check: bool = False, t: float = 0) -> RequestRestore:
    return RequestRestore(job_id=JOB, now=at(t), snapshot_id="snap-1", target=target, check=check)


def release(t: float = 0) -> ReleaseBackup:
    return ReleaseBackup(job_id=JOB, now=at(t))


def start(step: str, attempt: int = 1, *, worker: str = "w1", t: float = 0) -> StartStep:
    return StartStep(job_id=JOB, now=at(t), step=step, attempt=attempt, worker=worker)


def progress(
    step: str, attempt: int = 1, *, done: int = 1, total: int | None = 10, t: float = 1, **detail: Any
) -> RecordProgress:
    return RecordProgress(
        job_id=JOB, now=at(t), step=step, attempt=attempt, done=done, total=total, detail=detail
    )


def complete(step: str, attempt: int = 1, *, t: float = 2, **result: Any) -> CompleteStep:
    return CompleteStep(job_id=JOB, now=at(t), step=step, attempt=attempt, result=result)


def fail(
    step: str,
    attempt: int = 1,
    *,
    error: str = "boom",
    transient: bool = True,
    t: float = 2,
    policy: RetryPolicy | None = None,
) -> FailStep:
    return FailStep(
        job_id=JOB,
        now=at(t),
        step=step,
        attempt=attempt,
        error=error,
        transient=transient,
        policy=policy or RetryPolicy(),
    )


def expire(step: str, attempt: int = 1, *, t: float, policy: RetryPolicy | None = None) -> ExpireLease:
    return ExpireLease(job_id=JOB, now=at(t), step=step, attempt=attempt, policy=policy or RetryPolicy())


def cancel(t: float = 3) -> CancelJob:
    return CancelJob(job_id=JOB, now=at(t))
