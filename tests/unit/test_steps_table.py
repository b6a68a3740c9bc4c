"""The steps' table names every step of every job type, the drill's and the prune's loaded late."""

from __future__ import annotations

import importlib

from capsule.domain import drill_job, prune_job
from capsule.orchestrator.steps import ELSEWHERE, STEPS


def test_the_steps_loaded_when_run_are_exactly_those_of_their_modules() -> None:
    for job_type, (module, table, names) in ELSEWHERE.items():
        own = getattr(importlib.import_module(module), table)
        assert set(own) == {(job_type, step) for step in names}
        assert {key for key in STEPS if key[0] == job_type} == set(own)


def test_every_step_the_drill_and_the_prune_plan_has_a_function() -> None:
    assert {step for job_type, step in STEPS if job_type == "drill"} == set(drill_job.PLAN)
    assert {step for job_type, step in STEPS if job_type == "prune"} == set(prune_job.PLAN)
