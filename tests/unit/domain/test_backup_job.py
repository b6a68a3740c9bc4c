"""A backup job: its request, its queue, its steps in order, and messages that arrive twice or late."""

from __future__ import annotations

import pytest

from capsule.domain import backup_job
from capsule.domain.backup_job import (
    COMMIT,
    STORE,
    all_source,
    committed_snapshot_id,
    committed_snapshot_ids,
    plan_for,
    sources_of,
    step_target,
    stream_id,
    upload_step,
)
from capsule.domain.commands import RequestBackup, StartStep
from capsule.domain.errors import CapsuleError, InvalidCommand
from capsule.domain.events import (
    BackupCancelled,
    BackupCompleted,
    BackupFailed,
    BackupQueued,
    BackupReleased,
    BackupRequested,
)
from capsule.domain.jobs import is_finished
from tests.unit.domain import (
    JOB,
    at,
    backup_requested,
    cancel,
    complete,
    completed,
    fail,
    failed,
    progress,
    quoted,
    release,
    request_backup,
    scenarios,
    start,
    started,
)

given = scenarios(backup_job)

DONE_STORE = (backup_requested(), started(STORE), completed(STORE, files=1))


def test_stream_and_step_names_are_stable():
    assert stream_id("abc") == "backup-abc"
    assert plan_for("database") == ("store", "commit")
    assert upload_step("gdrive") == "upload:gdrive"


# Requests


def test_request_records_the_plan_of_a_database_backup():
    given().when(request_backup()).then(backup_requested(plan=["store", "commit"]))


def test_request_keeps_kind_source_full_and_tags():
    command = RequestBackup(
        job_id=JOB, now=at(0), source="data/pos.db", full=True, tags=("nightly", "manual")
    )
    expected = BackupRequested(
        job_id=JOB,
        kind="database",
        source="data/pos.db",
        full=True,
        tags=("nightly", "manual"),
        plan=(STORE, COMMIT),
    )
    given().when(command).then(expected)
    state = given(expected).state
    assert (state.status, state.kind, state.full, state.tags) == (
        "pending",
        "database",
        True,
        ("nightly", "manual"),
    )


def test_a_files_backup_stores_then_commits_the_folder():
    command = RequestBackup(job_id=JOB, now=at(0), kind="files", source="data/uploads/products")
    given().when(command).then(
        BackupRequested(
            job_id=JOB,
            kind="files",
            source="data/uploads/products",
            full=False,
            tags=(),
            plan=(STORE, COMMIT),
        )
    )


def test_a_backup_of_everything_commits_the_database_before_it_reads_the_images():
    source = all_source("data/pos.db", "data/uploads/products")
    command = RequestBackup(job_id=JOB, now=at(0), kind="all", source=source)
    plan = ("store:database", "commit:database", "store:files", "commit:files")
    given().when(command).then(
        BackupRequested(job_id=JOB, kind="all", source=source, full=False, tags=(), plan=plan)
    )
    assert [step_target("all", source, step) for step in plan] == [
        ("database", "data/pos.db"),
        ("database", "data/pos.db"),
        ("files", "data/uploads/products"),
        ("files", "data/uploads/products"),
    ]
    assert sources_of(source) == ("data/pos.db", "data/uploads/products")


@pytest.mark.parametrize(
    ("kind", "source"),
    [("all", "data/pos.db"), ("files", "data/uploads\nproducts"), ("database", "a.db\nb.db")],
)
def test_a_request_whose_sources_do_not_fit_its_kind_is_refused(kind, source):
    given().when(RequestBackup(job_id=JOB, now=at(0), kind=kind, source=source)).refused("source")


def test_every_commit_of_a_backup_of_everything_names_its_snapshot():
    source = all_source("data/pos.db", "data/uploads/products")
    requested = BackupRequested(
        job_id=JOB,
        kind="all",
        source=source,
        full=False,
        tags=(),
        plan=("store:database", "commit:database", "store:files", "commit:files"),
    )
    history = [requested]
    for step, snapshot in [
        ("store:database", None),
        ("commit:database", "snap-db"),
        ("store:files", None),
        ("commit:files", "snap-files"),
    ]:
        result = {"snapshot_id": snapshot} if snapshot else {"files": 1}
        history += [started(step), completed(step, **result)]
    state = given(*history).state
    assert committed_snapshot_ids(state) == ["snap-db", "snap-files"]
    given(*history[:-1]).when(complete("commit:files", files=1)).refused("snapshot_id")


def test_repeated_request_records_nothing():
    given(backup_requested()).when(request_backup()).then()


def test_repeated_request_records_nothing_even_if_the_backup_it_waited_for_has_finished():
    given(backup_requested(), BackupQueued(job_id=JOB, behind_job_id="job-0")).when(request_backup()).then()


def test_request_with_other_settings_for_an_existing_job_is_refused():
    given(backup_requested()).when(request_backup(source="other.db")).refused(
        "already requested with other settings"
    )


def test_commands_for_a_job_never_requested_are_refused():
    given().when(start(STORE)).refused(quoted("there is no backup job 'job-1'; request it first"))
    given().when(cancel()).refused("there is no backup job")
    given().when(release()).refused("there is no backup job")


def test_a_command_for_another_job_is_refused():
    command = StartStep(job_id="job-2", now=at(0), step=STORE, attempt=1, worker="w1")
    given(backup_requested()).when(command).refused("for job 'job-2' was sent to backup job 'job-1'")


# Queueing behind another backup of the same source


def test_request_while_another_backup_runs_is_queued_behind_it():
    given().when(request_backup(active_job_id="job-0")).then(
        backup_requested(), BackupQueued(job_id=JOB, behind_job_id="job-0")
    )


def test_a_job_cannot_queue_behind_itself():
    given().when(request_backup(active_job_id=JOB)).refused("cannot be queued behind itself")


QUEUED = (backup_requested(), BackupQueued(job_id=JOB, behind_job_id="job-0"))


def test_a_queued_job_cannot_start_a_step():
    given(*QUEUED).when(start(STORE)).refused("queued behind job 'job-0'")
    assert given(*QUEUED).state.status == "queued"


def test_release_lets_a_queued_job_start():
    given(*QUEUED).when(release()).then(BackupReleased(job_id=JOB))
    given(*QUEUED, BackupReleased(job_id=JOB)).when(start(STORE)).then(started(STORE))
    assert given(*QUEUED, BackupReleased(job_id=JOB)).state.status == "pending"


def test_release_twice_records_nothing():
    given(*QUEUED, BackupReleased(job_id=JOB)).when(release()).then()


def test_release_of_a_job_that_was_never_queued_records_nothing():
    given(backup_requested()).when(release()).then()


def test_release_of_a_cancelled_queued_job_records_nothing():
    given(*QUEUED, BackupCancelled(job_id=JOB)).when(release()).then()


# Steps in order


def test_start_takes_the_first_attempt_under_a_lease():
    given(backup_requested()).when(start(STORE, t=10)).then(started(STORE, t=10))
    state = given(backup_requested(), started(STORE, t=10)).state
    assert state.status == "running"
    assert state.find_step(STORE).worker == "w1"


def test_starting_the_running_attempt_again_records_nothing():
    given(backup_requested(), started(STORE)).when(start(STORE, t=5)).then()


def test_another_worker_cannot_take_an_attempt_already_taken():
    given(backup_requested(), started(STORE)).when(start(STORE, worker="w2")).refused(
        "belongs to worker 'w1'; worker 'w2' must not run it too"
    )


def test_starting_an_older_attempt_records_nothing():
    history = (backup_requested(), started(STORE), failed(STORE, retry_at=at(4)), started(STORE, 2, t=5))
    given(*history).when(start(STORE, 1, worker="w9")).then()


def test_commit_cannot_start_before_store_has_completed():
    given(backup_requested()).when(start(COMMIT)).refused(
        "'commit' cannot start before step 'store' has completed"
    )
    given(backup_requested(), started(STORE)).when(start(COMMIT)).refused("before step 'store' has completed")


def test_a_step_outside_the_plan_is_refused():
    given(backup_requested()).when(start("upload:gdrive")).refused(
        "has no step 'upload:gdrive'; its steps are store, commit"
    )


def test_a_new_attempt_cannot_start_while_one_runs():
    given(backup_requested(), started(STORE)).when(start(STORE, 2, worker="w2")).refused("expire its lease")


def test_attempt_numbers_cannot_be_skipped():
    given(backup_requested()).when(start(STORE, 2)).refused("is number 1, not 2")


def test_a_completed_step_does_not_run_again():
    given(*DONE_STORE).when(start(STORE, 2)).refused("'store' has already completed")
    given(*DONE_STORE).when(start(STORE, 1)).then()


def test_commit_starts_once_store_has_completed():
    given(*DONE_STORE).when(start(COMMIT, t=3)).then(started(COMMIT, t=3))


# Completion


def test_completing_store_records_its_result_and_keeps_the_job_running():
    given(backup_requested(), started(STORE)).when(complete(STORE, files=1)).then(completed(STORE, files=1))
    state = given(*DONE_STORE).state
    assert state.status == "running"
    assert state.find_step(STORE).result == {"files": 1}


def test_completing_commit_completes_the_backup_with_its_snapshot():
    history = (*DONE_STORE, started(COMMIT))
    given(*history).when(complete(COMMIT, snapshot_id="s1", files=1)).then(
        completed(COMMIT, snapshot_id="s1", files=1), BackupCompleted(job_id=JOB, snapshot_id="s1")
    )
    state = given(
        *history, completed(COMMIT, snapshot_id="s1"), BackupCompleted(job_id=JOB, snapshot_id="s1")
    ).state
    assert (state.status, state.snapshot_id, is_finished(state)) == ("completed", "s1", True)
    assert committed_snapshot_id(state) == "s1"


def test_commit_must_name_its_snapshot():
    given(*DONE_STORE, started(COMMIT)).when(complete(COMMIT, files=1)).refused("must give the `snapshot_id`")


def test_completing_a_step_twice_records_nothing():
    given(*DONE_STORE).when(complete(STORE, files=1, t=9)).then()


def test_completing_a_step_never_started_is_refused():
    given(backup_requested()).when(complete(STORE)).refused("attempt 1 of step 'store' was never started")
    given(*DONE_STORE).when(complete(COMMIT, snapshot_id="s1")).refused("'commit' was never started")


def test_completing_an_attempt_that_failed_records_nothing():
    history = (backup_requested(), started(STORE), failed(STORE, retry_at=at(4)))
    given(*history).when(complete(STORE)).then()


def test_completing_a_later_attempt_than_started_is_refused():
    given(backup_requested(), started(STORE)).when(complete(STORE, 2)).refused(
        "attempt 2 of step 'store' was never started"
    )


# Cancellation


def test_cancel_stops_a_running_backup():
    given(backup_requested(), started(STORE)).when(cancel()).then(BackupCancelled(job_id=JOB))
    state = given(backup_requested(), started(STORE), BackupCancelled(job_id=JOB)).state
    assert (state.status, is_finished(state)) == ("cancelled", True)


def test_cancel_stops_a_queued_backup():
    given(*QUEUED).when(cancel()).then(BackupCancelled(job_id=JOB))


def test_cancel_twice_records_nothing():
    given(backup_requested(), BackupCancelled(job_id=JOB)).when(cancel()).then()


def test_a_finished_backup_cannot_be_cancelled():
    done = (
        *DONE_STORE,
        started(COMMIT),
        completed(COMMIT, snapshot_id="s1"),
        BackupCompleted(job_id=JOB, snapshot_id="s1"),
    )
    given(*done).when(cancel()).refused(
        quoted("backup job 'job-1' has already completed; there is nothing to cancel")
    )
    gave_up = (backup_requested(), started(STORE), failed(STORE, transient=False, retry_at=None))
    given(*gave_up, BackupFailed(job_id=JOB, step=STORE, reason="x")).when(cancel()).refused(
        "has already failed"
    )


def test_late_messages_about_a_cancelled_backup_record_nothing():
    history = (backup_requested(), started(STORE), BackupCancelled(job_id=JOB))
    given(*history).when(progress(STORE, t=5)).then()
    given(*history).when(complete(STORE)).then()
    given(*history).when(fail(STORE)).then()
    given(*history).when(start(STORE)).then()


def test_a_cancelled_backup_starts_no_new_attempt():
    history = (backup_requested(), BackupCancelled(job_id=JOB))
    given(*history).when(start(STORE)).refused("is cancelled; none of its steps may start")


def test_decide_never_changes_the_state_it_is_given():
    state = given(backup_requested()).state
    before = state.model_copy(deep=True)
    backup_job.decide(state, start(STORE))
    assert state == before


def test_a_refusal_is_a_capsule_error_of_one_sentence():
    with pytest.raises(InvalidCommand) as raised:
        backup_job.decide(backup_job.initial_state(), start(STORE))
    assert isinstance(raised.value, CapsuleError)
    assert str(raised.value) == "there is no backup job 'job-1'; request it first"


def test_a_backup_uploads_to_each_destination_named_after_every_commit():
    source = all_source("data/pos.db", "data/uploads/products")
    command = RequestBackup(job_id=JOB, now=at(0), kind="all", source=source, destinations=("nas", "drive"))
    plan = ("store:database", "commit:database", "store:files", "commit:files", "upload:nas", "upload:drive")
    requested = BackupRequested(job_id=JOB, kind="all", source=source, full=False, tags=(), plan=plan)
    given().when(command).then(requested)
    assert given(requested).state.destinations == ("nas", "drive")
    assert plan_for("database", ("nas",)) == ("store", "commit", "upload:nas")


def test_a_destination_named_twice_is_refused():
    command = RequestBackup(job_id=JOB, now=at(0), source="data/pos.db", destinations=("nas", "nas"))
    given().when(command).refused("each destination once")
