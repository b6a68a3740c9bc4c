"""A prune: plan, repack, index, wait, delete; one at a time; its figures come from its steps."""

from __future__ import annotations

from capsule.domain import prune_job
from capsule.domain.commands import RequestPrune
from capsule.domain.events import PruneCancelled, PruneCompleted, PruneFailed, PruneRequested
from capsule.domain.prune_job import (
    DELETE,
    INDEX,
    PLAN,
    PLAN_STEP,
    REPACK,
    WAIT,
    still_to_wait_for,
    stream_id,
)
from tests.unit.domain import JOB, at, cancel, complete, completed, fail, quoted, scenarios, start, started

given = scenarios(prune_job)

REQUESTED = PruneRequested(job_id=JOB, repack_unused_percent=10, plan=PLAN)
PLANNED = {"bytes_before": 50_000, "unused_bytes": 30_000, "packs_to_delete": 2, "seconds": 0.5, "plan": {}}
REPACKED = {"packs_repacked": 1, "bytes_written": 4_000, "seconds": 1.0, "repacked": {}}
INDEXED = {"index_files": ["ab" * 32], "seconds": 0.25}
WAITED = {"backups": [], "lock_owners": 0, "seconds": 0.0}
DELETED = {
    "packs_deleted": 3,
    "bytes_deleted": 30_000,
    "bytes_after": 24_000,
    "packs_rescued": 1,
    "seconds": 0.25,
}


def request(**changes: object) -> RequestPrune:
    return RequestPrune.model_validate({"job_id": JOB, "now": at(0), **changes})


def through(step: str) -> tuple[object, ...]:
    """The history of a prune whose steps up to and including `step` completed."""
    done = {PLAN_STEP: PLANNED, REPACK: REPACKED, INDEX: INDEXED, WAIT: WAITED, DELETE: DELETED}
    history: list[object] = [REQUESTED]
    for name in PLAN[: PLAN.index(step) + 1]:
        history += [started(name), completed(name, **done[name])]
    return tuple(history)


def test_stream_and_plan_are_stable():
    assert stream_id("abc") == "prune-abc"
    assert PLAN == ("plan", "repack", "index", "wait", "delete")


def test_a_prune_is_requested_with_its_repack_threshold():
    given().when(request()).then(REQUESTED)
    given().when(request(repack_unused_percent=25)).then(
        PruneRequested(job_id=JOB, repack_unused_percent=25, plan=PLAN)
    )
    state = given(REQUESTED).state
    assert (state.plan, state.status, state.repack_unused_percent) == (PLAN, "pending", 10)


def test_a_request_while_another_prune_is_unfinished_records_nothing():
    given().when(request(active_job_id="job-0")).then()


def test_the_same_request_again_records_nothing():
    given(REQUESTED).when(request()).then()
    given(REQUESTED).when(request(job_id="job-2")).refused("was sent to prune job")


def test_a_threshold_outside_0_to_100_is_refused():
    for bad in (-1, 101):
        try:
            request(repack_unused_percent=bad)
        except ValueError:
            continue
        raise AssertionError(f"a threshold of {bad} was accepted")


def test_steps_run_in_order():
    given(REQUESTED).when(start(WAIT)).refused("cannot start before step 'plan'")
    given(*through(REPACK)).when(start(DELETE)).refused("cannot start before step 'index'")


def test_the_delete_step_completes_the_prune_with_its_figures():
    history = (*through(WAIT), started(DELETE))
    given(*history).when(complete(DELETE, **DELETED)).then(
        completed(DELETE, **DELETED),
        PruneCompleted(
            job_id=JOB,
            bytes_before=50_000,
            bytes_after=24_000,
            bytes_deleted=30_000,
            bytes_written=4_000,
            bytes_freed=26_000,
            packs_deleted=3,
            packs_repacked=1,
            packs_rescued=1,
            seconds=2.0,
        ),
    )
    after = prune_job.replay(
        [*history, *prune_job.decide(given(*history).state, complete(DELETE, **DELETED))]
    )
    assert after.status == "completed" and after.outcome is not None and after.outcome.bytes_freed == 26_000


def test_a_plan_or_delete_result_without_its_figures_is_refused():
    given(REQUESTED, started(PLAN_STEP)).when(complete(PLAN_STEP, unused_bytes=5)).refused(
        quoted("must give bytes_before")
    )
    given(*through(WAIT), started(DELETE)).when(complete(DELETE, packs_deleted=-1)).refused(
        quoted("packs_deleted, bytes_deleted, bytes_after")
    )


def test_a_failed_repack_fails_the_prune_and_keeps_the_plan():
    history = (*through(PLAN_STEP), started(REPACK))
    decided = prune_job.decide(given(*history).state, fail(REPACK, error="the disk is full", transient=False))
    assert isinstance(decided[-1], PruneFailed) and decided[-1].step == REPACK
    after = prune_job.replay([*history, *decided])
    assert after.status == "failed"
    assert prune_job.results(after) == {PLAN_STEP: PLANNED}


def test_a_prune_can_be_cancelled_before_it_ends():
    given(*through(INDEX), started(WAIT)).when(cancel()).then(PruneCancelled(job_id=JOB))


def test_the_grace_period_waits_for_backups_that_began_storing_before_the_new_index():
    starts = {"b-early": 10, "b-early-done": 11, "b-late": 40}
    assert still_to_wait_for(30, starts, finished=["b-early-done"]) == ["b-early"]
    assert still_to_wait_for(30, starts, finished=["b-early", "b-early-done"]) == []
    assert still_to_wait_for(5, starts, finished=[]) == []


def test_store_steps_are_recognised():
    assert [prune_job.is_store_step(s) for s in ("store", "store:database", "commit", "restore")] == [
        True,
        True,
        False,
        False,
    ]
