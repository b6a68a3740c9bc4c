"""Random streams of commands, valid or not, duplicated and out of order, never corrupt a job's log.

Each example sends a few dozen commands at random times; some are nonsense, some are what the
orchestrator would send next. Whatever the deciders accept is appended to a log, and the log, read
back through JSON, must rebuild exactly the state the commands produced; every accepted command,
delivered again, must decide nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.domain import backup_job, restore_job
from capsule.domain.commands import (
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
from capsule.domain.errors import InvalidCommand
from capsule.domain.events import Event, event_payload, event_type, load_event
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
from tests.unit.domain import JOB, at

POLICY = RetryPolicy(max_attempts=3, base_backoff=timedelta(seconds=2), max_backoff=timedelta(seconds=10))
LEASE = timedelta(seconds=60)
# Most moves follow the orchestrator's lead, so that jobs get far enough to complete and fail.
KINDS = ["request", "release", "start", "progress", "complete", "fail", "expire", "cancel", *["next"] * 8]


@dataclass(frozen=True)
class Move:
    kind: str
    step: str
    attempt: int
    worker: str
    seconds: int
    flag: bool
    done: int
    aim: bool
    job_id: str


def moves(steps: list[str]) -> st.SearchStrategy[list[Move]]:
    move = st.builds(
        Move,
        kind=st.sampled_from(KINDS),
        step=st.sampled_from([*steps, "bogus"]),
        attempt=st.integers(1, 4),
        worker=st.sampled_from(["w1", "w2"]),
        seconds=st.integers(0, 600),
        flag=st.booleans(),
        done=st.integers(0, 5),
        aim=st.booleans(),
        job_id=st.sampled_from([JOB, JOB, JOB, "job-2"]),
    )
    return st.lists(move, max_size=40)


def request(aggregate: ModuleType, m: Move) -> Any:
    if aggregate is backup_job:
        active = "job-0" if m.flag else None
        return RequestBackup(job_id=m.job_id, now=at(m.seconds), source="data/pos.db", active_job_id=active)
    target = "in-place" if m.flag else "restored"
    return RequestRestore(job_id=m.job_id, now=at(m.seconds), snapshot_id="s1", target=target)


def step_command(kind: str, m: Move, step: str, attempt: int) -> Any:
    common: dict[str, Any] = {"job_id": m.job_id, "now": at(m.seconds), "step": step, "attempt": attempt}
    match kind:
        case "start":
            return StartStep(**common, worker=m.worker, lease=LEASE)
        case "progress":
            return RecordProgress(**common, done=m.done, total=5, detail={"n": m.done}, lease=LEASE)
        case "complete":
            return CompleteStep(**common, result={"snapshot_id": f"snap-{attempt}", "n": m.done})
        case "fail":
            return FailStep(**common, error="boom", transient=m.flag, policy=POLICY)
        case _:
            return ExpireLease(**common, policy=POLICY)


def next_command(aggregate: ModuleType, state: Any, m: Move) -> Any:
    """What a well-behaved orchestrator (or the worker holding the lease) would send at this time."""
    if state.status is None:
        return request(aggregate, m)
    match next_action(state, at(m.seconds)):
        case RunStep(step=step, attempt=attempt) | WaitUntil(reason="retry", step=step, attempt=attempt):
            return step_command("start", m, step, attempt)
        case WaitUntil(reason="lease", step=step, attempt=attempt):
            return step_command(
                ("progress", "progress", "fail")[m.done] if m.done < 3 else "complete", m, step, attempt
            )
        case ExpireStepLease(step=step, attempt=attempt):
            return step_command("expire", m, step, attempt)
        case WaitForJob():
            return ReleaseBackup(job_id=m.job_id, now=at(m.seconds))
        case Finished():
            return CancelJob(job_id=m.job_id, now=at(m.seconds))
    raise AssertionError("next_action returned something unknown")


def command_for(aggregate: ModuleType, state: Any, m: Move) -> Any:
    match m.kind:
        case "request":
            return request(aggregate, m)
        case "release" if aggregate is backup_job:
            return ReleaseBackup(job_id=m.job_id, now=at(m.seconds))
        case "cancel" if m.flag:
            return CancelJob(job_id=m.job_id, now=at(m.seconds))
        case "start" | "progress" | "complete" | "fail" | "expire" as kind:
            # Half of them aim at the step that is open now, a little more likely to be taken.
            open_step = current_step(state) if state.status is not None else None
            if m.aim and open_step is not None:
                return step_command(kind, m, open_step.name, max(open_step.attempt, 1))
            return step_command(kind, m, m.step, m.attempt)
        case _:
            return next_command(aggregate, state, m)


def through_json(log: list[Event]) -> list[Event]:
    return [load_event(event_type(e), event_payload(e)) for e in log]


def check_invariants(state: Any) -> None:
    running = [s for s in state.steps if s.status == "running"]
    assert len(running) <= 1
    first_open = current_step(state)
    later = state.steps[state.steps.index(first_open) + 1 :] if first_open is not None else ()
    assert all(s.attempt == 0 for s in later), "a step started before the one ahead of it completed"
    assert all(s.attempt <= POLICY.max_attempts for s in state.steps)
    if state.status == "completed":
        assert first_open is None
    if first_open is None and state.status is not None:
        assert state.status in FINISHED


def run(aggregate: ModuleType, plan: list[Move]) -> None:
    state = aggregate.initial_state()
    log: list[Event] = []
    accepted = []
    for m in plan:
        command = command_for(aggregate, state, m)
        before = state
        try:
            decided = aggregate.decide(state, command)
        except InvalidCommand:
            assert state == before
            continue
        assert aggregate.decide(state, command) == decided, "decide is not deterministic"
        for event in decided:
            state = aggregate.evolve(state, event)
        log += decided
        if decided:
            accepted.append(command)
        check_invariants(state)
        assert aggregate.replay(through_json(log)) == state
    for command in accepted:
        assert aggregate.decide(state, command) == [], f"redelivering {command!r} recorded more events"


@pytest.mark.parametrize("aggregate", [backup_job, restore_job], ids=["backup", "restore"])
def test_random_commands_never_make_a_state_the_log_disagrees_with(aggregate):
    steps = ["store", "commit"] if aggregate is backup_job else ["restore", "stage", "apply"]

    @settings(max_examples=300, deadline=None)
    @given(moves(steps))
    def check(plan: list[Move]) -> None:
        run(aggregate, plan)

    check()
