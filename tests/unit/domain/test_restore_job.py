"""A restore job: into a directory in one step, into the live database in two."""

from __future__ import annotations

import pytest

from capsule.domain import restore_job
from capsule.domain.errors import InvalidEvent
from capsule.domain.events import (
    BackupQueued,
    BackupRequested,
    RestoreCancelled,
    RestoreCompleted,
    RestoreFailed,
    RestoreRequested,
)
from capsule.domain.jobs import Finished, RunStep, next_action
from capsule.domain.restore_job import APPLY, IN_PLACE, RESTORE, STAGE, plan_for, stream_id
from tests.unit.domain import (
    JOB,
    at,
    backup_requested,
    cancel,
    complete,
    completed,
    fail,
    failed,
    request_restore,
    restore_requested,
    scenarios,
    start,
    started,
)

given = scenarios(restore_job)

STAGED = (restore_requested(IN_PLACE), started(STAGE), completed(STAGE, staged="pos.db"))


def test_stream_and_step_names_are_stable():
    assert stream_id("abc") == "restore-abc"
    assert plan_for("restored") == ("restore",)
    assert plan_for("in-place") == ("stage", "apply")
    assert plan_for("./in-place") == ("restore",)


def test_a_restore_into_a_directory_runs_one_step():
    given().when(request_restore("restored")).then(restore_requested("restored"))
    state = given(restore_requested("restored")).state
    assert (state.plan, state.in_place, state.status) == ((RESTORE,), False, "pending")


def test_a_restore_in_place_stages_then_applies_and_always_checks():
    given().when(request_restore(IN_PLACE, check=False)).then(restore_requested(IN_PLACE, check=True))
    assert given(restore_requested(IN_PLACE, check=True)).state.in_place


def test_a_restore_into_a_directory_checks_only_when_asked():
    given().when(request_restore(check=True)).then(restore_requested(check=True))


def test_repeated_request_records_nothing():
    given(restore_requested(IN_PLACE, check=True)).when(request_restore(IN_PLACE)).then()


def test_request_with_other_settings_for_an_existing_job_is_refused():
    given(restore_requested("restored")).when(request_restore("elsewhere")).refused(
        "already requested with other settings"
    )


def test_a_request_to_cross_sources_is_recorded_and_cannot_be_changed_by_a_repeat():
    crossing = request_restore(IN_PLACE).model_copy(update={"from_other_source": True})
    recorded = restore_requested(IN_PLACE, check=True).model_copy(update={"from_other_source": True})

    given().when(crossing).then(recorded)
    assert given(recorded).state.from_other_source
    given(recorded).when(crossing).then()
    given(recorded).when(request_restore(IN_PLACE)).refused("already requested with other settings")


def test_special_bits_are_recorded_only_when_asked_and_a_repeat_must_ask_the_same():
    asked = request_restore().model_copy(update={"special_bits": True})
    recorded = restore_requested().model_copy(update={"special_bits": True})
    given().when(asked).then(recorded)
    given().when(request_restore()).then(restore_requested())
    assert given(recorded).state.special_bits
    assert not given(restore_requested()).state.special_bits
    given(restore_requested()).when(asked).refused("already requested with other settings")


def test_special_bits_for_the_live_database_are_refused():
    given().when(request_restore(IN_PLACE).model_copy(update={"special_bits": True})).refused(
        "--special-bits"
    )


def test_apply_cannot_start_before_stage_has_completed():
    given(restore_requested(IN_PLACE)).when(start(APPLY)).refused("'apply' cannot start before step 'stage'")


def test_apply_follows_stage():
    state = given(*STAGED).state
    assert next_action(state, at(5)) == RunStep(step=APPLY, attempt=1, resume_from=None)
    given(*STAGED).when(start(APPLY, t=5)).then(started(APPLY, t=5))


def test_completing_the_last_step_completes_the_restore_with_its_result():
    given(*STAGED, started(APPLY)).when(complete(APPLY, safety_copy="before.db")).then(
        completed(APPLY, safety_copy="before.db"),
        RestoreCompleted(job_id=JOB, result={"safety_copy": "before.db"}),
    )
    done = (*STAGED, started(APPLY), completed(APPLY, x=1), RestoreCompleted(job_id=JOB, result={"x": 1}))
    state = given(*done).state
    assert (state.status, state.result, next_action(state, at(9))) == (
        "completed",
        {"x": 1},
        Finished(status="completed"),
    )


def test_a_one_step_restore_completes_with_that_step():
    history = (restore_requested(), started(RESTORE))
    given(*history).when(complete(RESTORE, files=2)).then(
        completed(RESTORE, files=2), RestoreCompleted(job_id=JOB, result={"files": 2})
    )


def test_a_permanent_failure_fails_the_restore():
    history = (restore_requested(), started(RESTORE))
    given(*history).when(fail(RESTORE, error="a blob is damaged", transient=False)).then(
        failed(RESTORE, error="a blob is damaged", transient=False, retry_at=None),
        RestoreFailed(
            job_id=JOB,
            step=RESTORE,
            reason="step 'restore' failed with an error that retrying cannot fix: a blob is damaged",
        ),
    )


def test_a_restore_can_be_cancelled_while_staging():
    given(restore_requested(IN_PLACE), started(STAGE)).when(cancel()).then(RestoreCancelled(job_id=JOB))


def test_a_restore_cannot_be_cancelled_while_it_replaces_the_live_database():
    given(*STAGED, started(APPLY)).when(cancel()).refused("replacing the live database right now")


def test_a_restore_can_be_cancelled_between_attempts_of_apply():
    history = (*STAGED, started(APPLY), failed(APPLY, retry_at=at(4)))
    given(*history).when(cancel()).then(RestoreCancelled(job_id=JOB))


def test_a_finished_restore_cannot_be_cancelled():
    history = (restore_requested(), RestoreFailed(job_id=JOB, step=RESTORE, reason="x"))
    given(*history).when(cancel()).refused("restore job 'job-1' has already failed")


def test_commands_for_a_restore_never_requested_are_refused():
    given().when(start(RESTORE)).refused("there is no restore job 'job-1'")


@pytest.mark.parametrize(
    "stray",
    [
        BackupQueued(job_id=JOB, behind_job_id="job-0"),
        RestoreRequested(
            job_id=JOB, snapshot_id="s", target="t", force=False, check=False, plan=("restore",)
        ),
    ],
    ids=["backup event", "second request"],
)
def test_a_restore_log_with_a_stray_event_does_not_load(stray):
    with pytest.raises(InvalidEvent):
        restore_job.replay([restore_requested(), stray])


def test_a_backup_log_is_not_a_restore_log():
    requested: BackupRequested = backup_requested()
    with pytest.raises(InvalidEvent, match="does not begin with the job's request"):
        restore_job.replay([requested])
