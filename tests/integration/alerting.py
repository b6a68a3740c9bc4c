"""Backups that end as a test needs, without a worker: each step recorded through the job's decider.

A completed backup's commit names its snapshot and the snapshot's time, so a test sets how old the
last good backup is; the event log's own times stay the real ones.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from capsule.domain.commands import CompleteStep, FailStep, StartStep
from capsule.domain.settings import BackupSettings, with_changes
from capsule.orchestrator.runtime import Runtime

SOURCES = {"database": "/srv/shop/data/pos.db", "files": "/srv/shop/data/uploads/products"}
ACTOR = "person:test"
# The plan's schedules without the daily full one, so that the database answers to the hourly schedule.
UTC_SETTINGS = with_changes(BackupSettings(), {"timezone": "UTC"})


def backup(runtime: Runtime, kind: str, at: datetime, *, error: str | None = None) -> str:
    """A backup of `kind` that completes with a snapshot taken `at`, or fails with `error`."""
    job_id = runtime.request_backup(source=SOURCES[kind], kind=kind, actor=ACTOR)
    for step in ("store", "commit"):
        runtime.execute(
            "backup",
            job_id,
            lambda _, step=step: StartStep(job_id=job_id, now=at, step=step, attempt=1, worker="w1"),
            actor=ACTOR,
        )
        if error is not None:
            runtime.execute(
                "backup",
                job_id,
                lambda _, step=step: FailStep(
                    job_id=job_id, now=at, step=step, attempt=1, error=error, transient=False
                ),
                actor=ACTOR,
            )
            return job_id
        result = {"snapshot_id": secrets.token_hex(32), "time": at.isoformat()} if step == "commit" else {}
        runtime.execute(
            "backup",
            job_id,
            lambda _, step=step, result=result: CompleteStep(
                job_id=job_id, now=at, step=step, attempt=1, result=result
            ),
            actor=ACTOR,
        )
    return job_id


def drill_row(runtime: Runtime, status: str, at: datetime, error: str | None = None) -> str:
    """A finished restore drill in the jobs read model, as the drill jobs' projection writes it."""
    from capsule.orchestrator.projections import jobs

    job_id = f"drill-{secrets.token_hex(4)}"
    with runtime.engine.begin() as conn:
        conn.execute(
            jobs.insert().values(
                job_id=job_id,
                job_type="drill",
                kind="database",
                source=SOURCES["database"],
                status=status,
                requested_at=at,
                finished_at=at,
                error=error,
                actor="system:scheduler",
                correlation_id=job_id,
                last_position=0,
                updated_at=at,
            )
        )
    return job_id
