"""The CLI's list of job statuses is the domain's (it is spelled out so the CLI starts quickly)."""

from __future__ import annotations

from typing import get_args

from capsule.api.cli_jobs import JOB_STATUSES
from capsule.domain.jobs import JobStatus


def test_job_status_choices_are_the_domain_statuses() -> None:
    assert sorted(JOB_STATUSES) == sorted(get_args(JobStatus))
