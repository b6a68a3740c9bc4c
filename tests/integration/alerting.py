"""Backups and restore drills that end as a test needs, without a worker: each step recorded
through the job's decider.

A completed backup's commit names its snapshot and the snapshot's time, so a test sets how old the
last good backup is; the event log's own times stay the real ones.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from capsule.domain.commands import CompleteStep, FailStep, StartStep
from capsule.domain.drill_job import PLAN
from capsule.domain.settings import BackupSettings, with_changes
from capsule.orchestrator.runtime import Runtime

SOURCES = {"database": "/srv/shop/data/pos.db", "files": "/srv/shop/data/uploads/products"}
ACTOR = "person:test"
# The plan's schedules without the daily full one, so that the database answers to the hourly schedule.
UTC_SETTINGS = with_changes(BackupSettings(), {"timezone": "UTC"})


def backup(runtime: Runtime, kind: str, at: datetime, *, error: str | None = None) -> str:
    """A backup of `kind` that completes with a snapshot taken `at`, or fails with `error`."""
    job_id = runtime.request_backup(source=SOURCES[kind], kind=kind, actor=ACTOR)
    snapshot = {"snapshot_id": secrets.token_hex(32), "time": at.isoformat()}
    _run(runtime, "backup", job_id, {"store": {}, "commit": snapshot}, at=at, error=error)
    return job_id


def drill(runtime: Runtime, at: datetime, *, error: str | None = None) -> str:
    """A restore drill that proves both kinds' snapshots, or fails its first step with `error`,
    recorded through the drill job's decider as a worker records it."""
    job_id = runtime.request_drill(
        database_source=SOURCES["database"], files_source=SOURCES["files"], actor=ACTOR
    )
    proofs = {step: {"snapshot_id": secrets.token_hex(32)} for step in PLAN}
    _run(runtime, "drill", job_id, proofs, at=at, error=error)
    return job_id


def _run(
    runtime: Runtime,
    job_type: str,
    job_id: str,
    results: dict[str, dict[str, Any]],
    *,
    at: datetime,
    error: str | None = None,
) -> None:
    """Each step started and completed with its result, or the first one failed with `error`."""
    for step, result in results.items():
        runtime.execute(
            job_type,
            job_id,
            lambda _, step=step: StartStep(job_id=job_id, now=at, step=step, attempt=1, worker="w1"),
            actor=ACTOR,
        )
        if error is not None:
            runtime.execute(
                job_type,
                job_id,
                lambda _, step=step: FailStep(
                    job_id=job_id, now=at, step=step, attempt=1, error=error, transient=False
                ),
                actor=ACTOR,
            )
            return
        runtime.execute(
            job_type,
            job_id,
            lambda _, step=step, result=result: CompleteStep(
                job_id=job_id, now=at, step=step, attempt=1, result=result
            ),
            actor=ACTOR,
        )
