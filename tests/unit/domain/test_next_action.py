"""What the orchestrator reads from a job's state: its status and what to do next."""

from __future__ import annotations

import pytest

from capsule.domain import backup_job
from capsule.domain.backup_job import COMMIT, STORE
from capsule.domain.errors import InvalidCommand
from capsule.domain.events import BackupCancelled, BackupCompleted, BackupFailed, BackupQueued, BackupReleased
from capsule.domain.jobs import (
    Finished,
    RunStep,
    WaitForJob,
    WaitUntil,
    current_step,
    is_finished,
    next_action,
)
from tests.unit.domain import JOB, at, backup_requested, completed, failed, lease_expired, started

QUEUED = (backup_requested(), BackupQueued(job_id=JOB, behind_job_id="job-0"))
DONE = (
    backup_requested(),
    started(STORE),
    completed(STORE),
    started(COMMIT),
    completed(COMMIT, snapshot_id="s1"),
    BackupCompleted(job_id=JOB, snapshot_id="s1"),
)
FAILED = (
    backup_requested(),
    started(STORE),
    failed(STORE, transient=False, retry_at=None),
    BackupFailed(job_id=JOB, step=STORE, reason="x"),
)


@pytest.mark.parametrize(
    ("history", "status", "action"),
    [
        (QUEUED, "queued", WaitForJob(behind_job_id="job-0")),
        ((*QUEUED, BackupReleased(job_id=JOB)), "pending", RunStep(step=STORE, attempt=1, resume_from=None)),
        ((backup_requested(),), "pending", RunStep(step=STORE, attempt=1, resume_from=None)),
        (
            (backup_requested(), started(STORE)),
            "running",
            WaitUntil(until=at(300), reason="lease", step=STORE, attempt=1),
        ),
        (
            (backup_requested(), started(STORE), completed(STORE)),
            "running",
            RunStep(step=COMMIT, attempt=1, resume_from=None),
        ),
        (
            (backup_requested(), started(STORE), failed(STORE, retry_at=at(12))),
            "retrying",
            WaitUntil(until=at(12), reason="retry", step=STORE, attempt=2),
        ),
        (
            (backup_requested(), started(STORE), lease_expired(STORE)),
            "retrying",
            RunStep(step=STORE, attempt=2, resume_from=None),
        ),
        (DONE, "completed", Finished(status="completed")),
        (FAILED, "failed", Finished(status="failed")),
        ((*QUEUED, BackupCancelled(job_id=JOB)), "cancelled", Finished(status="cancelled")),
        (
            (backup_requested(), started(STORE), BackupCancelled(job_id=JOB)),
            "cancelled",
            Finished(status="cancelled"),
        ),
    ],
    ids=[
        "queued",
        "released",
        "requested",
        "running",
        "between steps",
        "retry due later",
        "lease expired",
        "completed",
        "failed",
        "cancelled while queued",
        "cancelled while running",
    ],
)
def test_status_and_next_action(history, status, action):
    state = backup_job.replay(history)
    assert state.status == status
    assert next_action(state, at(10)) == action
    assert is_finished(state) == (status in {"completed", "failed", "cancelled"})


def test_current_step_is_the_first_one_not_completed():
    assert current_step(backup_job.replay(DONE[:3])).name == COMMIT
    assert current_step(backup_job.replay(DONE)) is None


def test_there_is_nothing_to_do_for_a_job_never_requested():
    state = backup_job.initial_state()
    assert state.status is None
    assert not is_finished(state)
    with pytest.raises(InvalidCommand, match="no job to act on"):
        next_action(state, at(0))
