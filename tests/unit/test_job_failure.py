"""A command waiting for a job ends with the code of the error that ended the job, read from its log."""

from __future__ import annotations

from functools import reduce

import pytest

from capsule.api.exitcodes import exit_code
from capsule.domain import backup_job
from capsule.domain.backup_job import STORE
from capsule.domain.errors import Category
from capsule.domain.events import BackupFailed, Event, StepFailed, load_event
from capsule.orchestrator import codec
from capsule.orchestrator.jobrunner import failure
from capsule.orchestrator.runtime import Loaded
from tests.unit.domain import JOB, backup_requested, started


def loaded(*events: Event) -> Loaded:
    state = reduce(backup_job.evolve, events, backup_job.initial_state())
    return Loaded(job_type="backup", state=state, version=len(events), events=list(events))


def step_failed(category: Category) -> StepFailed:
    return StepFailed(
        job_id=JOB,
        step=STORE,
        attempt=5,
        error="the repository is locked by pid 42",
        transient=True,
        retry_at=None,
        category=category,
    )


def test_a_job_that_a_lock_stopped_fails_its_command_as_locked():
    ended = failure(
        loaded(
            backup_requested(),
            started(STORE, 5),
            step_failed(Category.LOCKED),
            BackupFailed(job_id=JOB, step=STORE, reason="gave up"),
        )
    )

    assert ended.category is Category.LOCKED
    assert str(ended) == "the repository is locked by pid 42"
    assert exit_code(ended.category) == 4


@pytest.mark.parametrize(("v1_code", "code"), [(3, 3), (4, 4), (1, 1)])
def test_a_job_failed_by_an_older_capsule_ends_its_command_with_the_code_it_recorded(v1_code: int, code: int):
    v1 = step_failed(Category.UNKNOWN).model_dump(mode="json", exclude={"category"})
    data = codec.upcasters().upcast("StepFailed", 1, {**v1, "exit_code": v1_code})
    old = load_event("StepFailed", data, schema_version=StepFailed.schema_version)

    ended = failure(
        loaded(
            backup_requested(),
            started(STORE, 5),
            old,
            BackupFailed(job_id=JOB, step=STORE, reason="gave up"),
        )
    )

    assert exit_code(ended.category) == code
