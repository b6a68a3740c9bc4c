"""A restore drill: two steps, each naming the snapshot it proved; a drill that proves nothing fails."""

from __future__ import annotations

from capsule.domain import drill_job
from capsule.domain.commands import RequestDrill
from capsule.domain.drill_job import PLAN, PROVE_DATABASE, PROVE_FILES, proven, stream_id
from capsule.domain.events import DrillCancelled, DrillCompleted, DrillFailed, DrillRequested
from tests.unit.domain import JOB, at, cancel, complete, completed, fail, quoted, scenarios, start, started

given = scenarios(drill_job)

REQUESTED = DrillRequested(
    job_id=JOB,
    database_source="/srv/shop/data/pos.db",
    files_source="/srv/shop/data/uploads/products",
    sample_files=20,
    sample_percent=2.0,
    plan=PLAN,
)
DATABASE_PROVEN = {
    "snapshot_id": "aa" * 32,
    "integrity_check": "ok",
    "foreign_key_check": "ok",
    "bytes": 4096,
    "seconds": 1.5,
}
FILES_PROVEN = {
    "snapshot_id": "bb" * 32,
    "images_total": 500,
    "images_sampled": 20,
    "images_checked": 20,
    "bytes": 1000,
    "seconds": 0.25,
}


def request(**changes: object) -> RequestDrill:
    fields = {
        "job_id": JOB,
        "now": at(0),
        "database_source": REQUESTED.database_source,
        "files_source": REQUESTED.files_source,
        **changes,
    }
    return RequestDrill.model_validate(fields)


def test_stream_and_plan_are_stable():
    assert stream_id("abc") == "drill-abc"
    assert PLAN == ("prove:database", "prove:files")


def test_a_drill_proves_the_database_then_the_images():
    given().when(request()).then(REQUESTED)
    state = given(REQUESTED).state
    assert (state.plan, state.status) == (PLAN, "pending")
    assert state.sources == (REQUESTED.database_source, REQUESTED.files_source)


def test_the_same_request_again_records_nothing_and_another_is_refused():
    given(REQUESTED).when(request()).then()
    given(REQUESTED).when(request(sample_files=5)).refused("already requested with other settings")


def test_the_last_step_completes_the_drill_with_what_it_proved():
    history = (REQUESTED, started(PROVE_DATABASE), completed(PROVE_DATABASE, **DATABASE_PROVEN))
    given(*history, started(PROVE_FILES)).when(complete(PROVE_FILES, **FILES_PROVEN)).then(
        completed(PROVE_FILES, **FILES_PROVEN),
        DrillCompleted(
            job_id=JOB,
            database_snapshot_id="aa" * 32,
            files_snapshot_id="bb" * 32,
            integrity_check="ok",
            foreign_key_check="ok",
            images_total=500,
            images_sampled=20,
            images_checked=20,
            bytes=5096,
            seconds=1.75,
        ),
    )


def test_a_step_that_names_no_snapshot_is_refused():
    given(REQUESTED, started(PROVE_DATABASE)).when(complete(PROVE_DATABASE, bytes=1)).refused(
        quoted("must name the snapshot it proved")
    )


def test_a_database_proven_before_the_images_failed_stays_proven():
    history = (REQUESTED, started(PROVE_DATABASE), completed(PROVE_DATABASE, **DATABASE_PROVEN))
    state = given(*history, started(PROVE_FILES)).state
    decided = drill_job.decide(state, fail(PROVE_FILES, error="no images snapshot yet", transient=False))

    assert isinstance(decided[-1], DrillFailed) and decided[-1].step == PROVE_FILES
    after = drill_job.replay([*history, started(PROVE_FILES), *decided])
    assert after.status == "failed"
    assert proven(after) == {"database": DATABASE_PROVEN}


def test_a_drill_can_be_cancelled_before_it_ends():
    given(REQUESTED, started(PROVE_DATABASE)).when(cancel()).then(DrillCancelled(job_id=JOB))
    given(REQUESTED).when(start(PROVE_FILES)).refused("cannot start before step 'prove:database'")
