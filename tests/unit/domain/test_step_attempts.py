"""Attempts of a step: heartbeats and the resume point, failures and backoff, leases that run out."""

from __future__ import annotations

from datetime import timedelta

import pytest

from capsule.domain import backup_job
from capsule.domain.backup_job import COMMIT, STORE
from capsule.domain.commands import RetryPolicy
from capsule.domain.events import BackupCompleted, BackupFailed
from capsule.domain.jobs import ExpireStepLease, Progress, RunStep, WaitUntil, next_action, resume_point
from tests.unit.domain import (
    JOB,
    LEASE,
    at,
    backup_requested,
    complete,
    completed,
    expire,
    fail,
    failed,
    lease_expired,
    progress,
    progressed,
    scenarios,
    start,
    started,
)

given = scenarios(backup_job)

RUNNING = (backup_requested(), started(STORE))

# Heartbeats and the resume point


def test_progress_is_recorded_and_extends_the_lease():
    given(*RUNNING).when(progress(STORE, done=3, total=10, t=30, pack="p1")).then(
        progressed(STORE, done=3, total=10, t=30, pack="p1")
    )
    state = given(*RUNNING, progressed(STORE, done=3, t=30)).state
    assert state.find_step(STORE).lease_expires_at == at(30) + LEASE


def test_the_same_heartbeat_twice_records_nothing():
    given(*RUNNING, progressed(STORE, done=3, t=30)).when(progress(STORE, done=3, t=30)).then()


def test_a_heartbeat_older_than_one_recorded_records_nothing():
    given(*RUNNING, progressed(STORE, done=5, t=30)).when(progress(STORE, done=3, t=20)).then()


def test_a_heartbeat_of_an_old_attempt_records_nothing():
    history = (*RUNNING, lease_expired(STORE), started(STORE, 2, worker="w2", t=400))
    given(*history).when(progress(STORE, 1, done=9, t=401)).then()


def test_a_heartbeat_of_an_attempt_that_ended_records_nothing():
    given(*RUNNING, lease_expired(STORE)).when(progress(STORE, done=9, t=401)).then()


def test_a_heartbeat_of_an_attempt_never_started_is_refused():
    given(*RUNNING).when(progress(STORE, 2)).refused("attempt 2 of step 'store' was never started")
    given(backup_requested()).when(progress(STORE)).refused("was never started")


def test_the_next_attempt_resumes_from_the_last_progress_of_any_attempt():
    history = (*RUNNING, progressed(STORE, done=7, total=10, t=30, pack="p3"), lease_expired(STORE))
    state = given(*history).state
    point = Progress(attempt=1, done=7, total=10, detail={"pack": "p3"})
    assert resume_point(state, STORE) == point
    assert next_action(state, at(400)) == RunStep(step=STORE, attempt=2, resume_from=point)
    assert resume_point(state, COMMIT) is None
    assert resume_point(state, "nothing") is None


def test_a_new_attempt_keeps_the_resume_point_until_it_reports_its_own():
    history = (*RUNNING, progressed(STORE, done=7, t=30), lease_expired(STORE), started(STORE, 2, t=400))
    assert resume_point(given(*history).state, STORE).done == 7
    later = given(*history, progressed(STORE, 2, done=8, t=410)).state
    assert resume_point(later, STORE) == Progress(attempt=2, done=8, total=10, detail={})


# Failures, retries and backoff


def test_backoff_doubles_from_two_seconds_and_stops_at_sixty():
    policy = RetryPolicy(max_attempts=10)
    assert [policy.backoff(n).total_seconds() for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.backoff(10_000) == timedelta(seconds=60)


def test_the_default_policy_allows_five_attempts():
    policy = RetryPolicy()
    assert [policy.allows_another_after(n) for n in range(1, 6)] == [True, True, True, True, False]


def test_a_policy_whose_cap_is_below_its_base_is_refused():
    with pytest.raises(ValueError, match="max_backoff"):
        RetryPolicy(base_backoff=timedelta(seconds=10), max_backoff=timedelta(seconds=5))


def test_a_transient_failure_is_retried_after_the_backoff():
    given(*RUNNING).when(fail(STORE, t=10)).then(failed(STORE, retry_at=at(12)))
    state = given(*RUNNING, failed(STORE, retry_at=at(12))).state
    assert (state.status, state.find_step(STORE).status, state.find_step(STORE).error) == (
        "retrying",
        "retrying",
        "boom",
    )


def test_the_second_failure_waits_twice_as_long():
    history = (*RUNNING, failed(STORE, retry_at=at(12)), started(STORE, 2, t=12))
    given(*history).when(fail(STORE, 2, t=20)).then(failed(STORE, 2, retry_at=at(24)))


def test_backoff_is_capped():
    policy = RetryPolicy(max_attempts=10, max_backoff=timedelta(seconds=60))
    history = [*RUNNING]
    for attempt in range(1, 7):
        history += [failed(STORE, attempt, retry_at=at(0)), started(STORE, attempt + 1)]
    given(*history).when(fail(STORE, 7, t=100, policy=policy)).then(failed(STORE, 7, retry_at=at(160)))


def test_the_last_allowed_attempt_fails_the_backup():
    policy = RetryPolicy(max_attempts=2)
    history = (*RUNNING, failed(STORE, retry_at=at(4)), started(STORE, 2, t=4))
    given(*history).when(fail(STORE, 2, error="the disk is full", policy=policy)).then(
        failed(STORE, 2, error="the disk is full", retry_at=None),
        BackupFailed(
            job_id=JOB, step=STORE, reason="step 'store' failed 2 times, the last time with: the disk is full"
        ),
    )


def test_a_permanent_failure_fails_the_backup_at_once():
    given(*RUNNING).when(fail(STORE, error="the key file is missing", transient=False)).then(
        failed(STORE, error="the key file is missing", transient=False, retry_at=None),
        BackupFailed(
            job_id=JOB,
            step=STORE,
            reason="step 'store' failed with an error that retrying cannot fix: the key file is missing",
        ),
    )
    state = given(
        *RUNNING,
        failed(STORE, transient=False, retry_at=None),
        BackupFailed(job_id=JOB, step=STORE, reason="why"),
    ).state
    assert (state.status, state.failure, state.find_step(STORE).status) == ("failed", "why", "failed")


def test_the_same_failure_twice_records_nothing():
    given(*RUNNING, failed(STORE, retry_at=at(4))).when(fail(STORE)).then()


def test_failing_a_step_never_started_is_refused():
    given(backup_requested()).when(fail(STORE)).refused("attempt 1 of step 'store' was never started")


def test_a_retry_waits_for_its_time_then_runs_the_next_attempt():
    state = given(*RUNNING, failed(STORE, retry_at=at(12))).state
    assert next_action(state, at(11)) == WaitUntil(until=at(12), reason="retry", step=STORE, attempt=2)
    assert next_action(state, at(12)) == RunStep(step=STORE, attempt=2, resume_from=None)


def test_the_retry_starts_the_next_attempt():
    given(*RUNNING, failed(STORE, retry_at=at(12))).when(start(STORE, 2, t=12)).then(started(STORE, 2, t=12))


# Leases


def test_a_lease_that_has_not_run_out_is_not_expired():
    given(*RUNNING).when(expire(STORE, t=299)).then()


def test_a_lease_that_ran_out_makes_the_step_runnable_again():
    given(*RUNNING).when(expire(STORE, t=300)).then(lease_expired(STORE))
    state = given(*RUNNING, lease_expired(STORE)).state
    assert state.status == "retrying"
    assert next_action(state, at(300)) == RunStep(step=STORE, attempt=2, resume_from=None)


def test_next_action_says_when_a_lease_must_be_expired():
    state = given(*RUNNING).state
    assert next_action(state, at(299)) == WaitUntil(until=at(300), reason="lease", step=STORE, attempt=1)
    assert next_action(state, at(300)) == ExpireStepLease(step=STORE, attempt=1)


def test_a_heartbeat_keeps_the_lease_alive():
    given(*RUNNING, progressed(STORE, t=200)).when(expire(STORE, t=300)).then()


def test_expiring_twice_records_nothing():
    given(*RUNNING, lease_expired(STORE)).when(expire(STORE, t=900)).then()


def test_expiring_an_old_attempt_records_nothing():
    history = (*RUNNING, lease_expired(STORE), started(STORE, 2, t=300))
    given(*history).when(expire(STORE, 1, t=900)).then()


def test_expiring_an_attempt_never_started_is_refused():
    given(*RUNNING).when(expire(STORE, 2, t=900)).refused("attempt 2 of step 'store' was never started")


def test_a_late_report_from_a_worker_whose_lease_expired_records_nothing():
    history = (*RUNNING, lease_expired(STORE))
    given(*history).when(complete(STORE, files=1, t=400)).then()
    given(*history).when(fail(STORE, t=400)).then()


def test_expired_leases_count_towards_the_attempts_allowed():
    policy = RetryPolicy(max_attempts=3)
    history = (
        *RUNNING,
        lease_expired(STORE),
        started(STORE, 2, t=300),
        failed(STORE, 2, retry_at=at(304)),
        started(STORE, 3, t=304),
    )
    given(*history).when(expire(STORE, 3, t=604, policy=policy)).then(
        lease_expired(STORE, 3),
        BackupFailed(
            job_id=JOB,
            step=STORE,
            reason="the worker running step 'store' stopped reporting 3 times; "
            "check that the workers are running and look in their logs for why they stopped",
        ),
    )


def test_a_step_resumes_after_its_worker_disappears_and_the_backup_completes():
    history = (
        *RUNNING,
        progressed(STORE, done=4, t=60),
        lease_expired(STORE),
        started(STORE, 2, worker="w2", t=400),
        completed(STORE, 2, files=1),
        started(COMMIT, worker="w2", t=401),
    )
    given(*history).when(complete(COMMIT, snapshot_id="s1", t=402)).then(
        completed(COMMIT, snapshot_id="s1"), BackupCompleted(job_id=JOB, snapshot_id="s1")
    )


# Interruptions: Ctrl-C, SIGTERM, a process found gone on its own host


def test_an_interrupted_attempt_leaves_the_job_interrupted_and_the_next_attempt_due_at_once():
    from capsule.domain.commands import InterruptStep
    from capsule.domain.events import StepInterrupted

    interrupt = InterruptStep(job_id=JOB, now=at(5), step=STORE, attempt=1, reason="interrupted (SIGINT)")
    given(*RUNNING).when(interrupt).then(
        StepInterrupted(job_id=JOB, step=STORE, attempt=1, reason="interrupted (SIGINT)")
    )
    state = given(*RUNNING, StepInterrupted(job_id=JOB, step=STORE, attempt=1, reason="gone")).state
    assert state.status == "interrupted"
    # Long before the lease would have run out, the next attempt may start.
    assert next_action(state, at(6)) == RunStep(step=STORE, attempt=2, resume_from=None)
    given(*RUNNING, StepInterrupted(job_id=JOB, step=STORE, attempt=1, reason="gone")).when(interrupt).then()
    given(*RUNNING, lease_expired(STORE)).when(interrupt).then()


def test_a_job_stopped_between_two_steps_is_paused_before_the_next_ones_first_attempt():
    from capsule.domain.commands import PauseStep
    from capsule.domain.events import StepInterrupted

    # Ctrl-C after the store step completed, before the commit step started: no attempt runs.
    between = (*RUNNING, completed(STORE, files=1))
    pause = PauseStep(job_id=JOB, now=at(5), step=COMMIT, attempt=0, reason="interrupted (SIGINT)")
    paused = StepInterrupted(job_id=JOB, step=COMMIT, attempt=0, reason="interrupted (SIGINT)")
    given(*between).when(pause).then(paused)
    state = given(*between, paused).state
    assert state.status == "interrupted"
    assert state.find_step(COMMIT).status == "pending"
    assert next_action(state, at(6)) == RunStep(step=COMMIT, attempt=1, resume_from=None)
    given(*between, paused).when(pause).then()
    # A job requested and not started yet is paused before its first step.
    first = PauseStep(job_id=JOB, now=at(1), step=STORE, attempt=0, reason="interrupted (SIGTERM)")
    given(backup_requested()).when(first).then(
        StepInterrupted(job_id=JOB, step=STORE, attempt=0, reason="interrupted (SIGTERM)")
    )


def test_a_job_stopped_before_a_retry_is_paused_and_the_retry_is_due_at_once():
    from capsule.domain.commands import PauseStep
    from capsule.domain.events import StepInterrupted

    history = (*RUNNING, failed(STORE, retry_at=at(300)))
    pause = PauseStep(job_id=JOB, now=at(5), step=STORE, attempt=1, reason="interrupted (SIGINT)")
    given(*history).when(pause).then(
        StepInterrupted(job_id=JOB, step=STORE, attempt=1, reason="interrupted (SIGINT)")
    )
    state = given(*history, StepInterrupted(job_id=JOB, step=STORE, attempt=1, reason="x")).state
    assert state.status == "interrupted"
    assert next_action(state, at(6)) == RunStep(step=STORE, attempt=2, resume_from=None)


def test_a_pause_records_nothing_once_an_attempt_runs_or_the_job_moved_on():
    from capsule.domain.commands import PauseStep

    def pause(step: str, attempt: int) -> PauseStep:
        return PauseStep(job_id=JOB, now=at(5), step=step, attempt=attempt, reason="interrupted (SIGINT)")

    given(*RUNNING).when(pause(STORE, 1)).then()  # running: `InterruptStep` stops it
    given(*RUNNING).when(pause(STORE, 0)).then()  # an attempt started since
    given(*RUNNING, completed(STORE, files=1)).when(pause(STORE, 1)).then()  # past the step
    done = (*RUNNING, completed(STORE, files=1), started(COMMIT), completed(COMMIT, snapshot_id="s1"))
    given(*done, BackupCompleted(job_id=JOB, snapshot_id="s1")).when(pause(COMMIT, 1)).then()
    given(*RUNNING).when(pause(STORE, 2)).refused("attempt 2 of step 'store' was never started")
