"""The steps' table names every step of every job type, each loaded late from its job type's module."""

from __future__ import annotations

import importlib

from capsule.domain import drill_job, prune_job
from capsule.domain.restore_job import APPLY, RESTORE, STAGE
from capsule.orchestrator.steps import ELSEWHERE, STEPS, step_function


def test_the_steps_loaded_when_run_are_exactly_those_of_their_modules() -> None:
    for job_type, (module, table, names) in ELSEWHERE.items():
        own = getattr(importlib.import_module(module), table)
        assert set(own) == {(job_type, step) for step in names}
        assert {key for key in STEPS if key[0] == job_type} == set(own)


def test_every_job_type_has_its_steps_in_a_module_of_its_own() -> None:
    assert set(ELSEWHERE) == {"backup", "restore", "drill", "prune"}
    assert len({module for module, _, _ in ELSEWHERE.values()}) == len(ELSEWHERE)


def test_every_step_the_jobs_plan_has_a_function() -> None:
    assert {step for job_type, step in STEPS if job_type == "drill"} == set(drill_job.PLAN)
    assert {step for job_type, step in STEPS if job_type == "prune"} == set(prune_job.PLAN)
    assert {step for job_type, step in STEPS if job_type == "restore"} == {RESTORE, STAGE, APPLY}
    backup = {step for job_type, step in STEPS if job_type == "backup"}
    kinds = ("database", "files")
    assert backup == {"store", "commit", *(f"{s}:{k}" for s in ("store", "commit") for k in kinds)}


def test_an_upload_step_of_any_destination_has_a_function() -> None:
    assert step_function("backup", "upload:drive") is not None
    assert step_function("backup", "upload:nas") is step_function("backup", "upload:drive")
    assert step_function("restore", "upload:drive") is None
