"""Questions the read models answer, for the CLI, the API, the command handlers and the sweep.

Each takes a Connection (to read inside a command's transaction, seeing what it wrote) or an
Engine (to read on a connection of its own, which on SQLite never waits for a writer). Rows come
back as plain dicts of column to value; timestamps are aware, in UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Select, select

from capsule.domain.backup_job import UPLOAD_PREFIX, sources_of
from capsule.domain.jobs import FINISHED
from capsule.orchestrator.codec import JobType
from capsule.orchestrator.db import database_errors, for_reading
from capsule.orchestrator.projections.rows import SETTINGS_ROW, Row
from capsule.orchestrator.projections.tables import (
    backup_dest_objects,
    backup_settings,
    drill_proofs,
    jobs,
    restore_jobs,
    schedule_runs,
    snapshot_marks,
    snapshots,
)

Database = Connection | Engine

_FINISHED = sorted(FINISHED)


def settings_row(db: Database) -> Row | None:
    """The `backup_settings` row: the values set so far and the last change; None before any change."""
    rows = _rows(db, select(backup_settings).where(backup_settings.c.name == SETTINGS_ROW))
    return rows[0] if rows else None


def last_schedule_runs(db: Database) -> dict[str, Row]:
    """Each schedule's last run, by schedule name."""
    return {str(r["schedule"]): r for r in _rows(db, select(schedule_runs))}


def proven_snapshots(db: Database) -> dict[str, Row]:
    """Per snapshot kind, the last snapshot a restore drill proved restorable."""
    return {str(r["kind"]): r for r in _rows(db, select(drill_proofs))}


def get_job(db: Database, job_id: str) -> Row | None:
    """The `jobs` row of job `job_id`, or None if the log holds no such job."""
    rows = _rows(db, select(jobs).where(jobs.c.job_id == job_id))
    return rows[0] if rows else None


def list_jobs(
    db: Database, limit: int = 20, status: str | None = None, job_type: JobType | None = None
) -> list[Row]:
    """Up to `limit` jobs, newest request first, of one status and one type if given."""
    query = select(jobs)
    if status is not None:
        query = query.where(jobs.c.status == status)
    if job_type is not None:
        query = query.where(jobs.c.job_type == job_type)
    return _rows(db, query.order_by(jobs.c.requested_at.desc(), jobs.c.job_id.desc()).limit(limit))


def unfinished_jobs(db: Database) -> list[tuple[str, JobType]]:
    """(job id, job type) of every job that has not completed, failed or been cancelled, oldest first.

    What a recovery sweep looks at: queued jobs too, whose release may have been lost.
    """
    query = (
        select(jobs.c.job_id, jobs.c.job_type)
        .where(jobs.c.status.not_in(_FINISHED))
        .order_by(jobs.c.requested_at, jobs.c.job_id)
    )
    return [(row["job_id"], row["job_type"]) for row in _rows(db, query)]


def active_backup_for_source(db: Database, source: str, *, uploading_too: bool = True) -> str | None:
    """The backup a new request for `source` must queue behind: the latest unfinished one, not queued
    itself, that backs up any of the same sources (a backup of kind `all` has two). Without
    `uploading_too`, one whose snapshots are committed and only uploads is not counted: it no
    longer reads the source, and a slow destination must not hold the next backups back."""
    wanted = set(sources_of(source))
    query = (
        select(jobs.c.job_id, jobs.c.source)
        .where(jobs.c.job_type == "backup", jobs.c.status.not_in([*_FINISHED, "queued"]))
        .order_by(jobs.c.requested_at.desc(), jobs.c.job_id.desc())
    )
    if not uploading_too:
        step = jobs.c.current_step
        query = query.where(step.is_(None) | step.not_like(f"{UPLOAD_PREFIX}%"))
    for row in _rows(db, query):
        if wanted.intersection(sources_of(row["source"])):
            return str(row["job_id"])
    return None


def active_prune(db: Database) -> str | None:
    """The prune that has not finished, which a new prune request joins; None if there is none."""
    query = (
        select(jobs.c.job_id)
        .where(jobs.c.job_type == "prune", jobs.c.status.not_in(_FINISHED))
        .order_by(jobs.c.requested_at, jobs.c.job_id)
        .limit(1)
    )
    rows = _rows(db, query)
    return str(rows[0]["job_id"]) if rows else None


def jobs_queued_behind(db: Database, job_id: str) -> list[str]:
    """The backups still queued behind job `job_id`, in the order they were requested."""
    query = (
        select(jobs.c.job_id)
        .where(jobs.c.queued_behind == job_id, jobs.c.status == "queued")
        .order_by(jobs.c.requested_at, jobs.c.job_id)
    )
    return [row["job_id"] for row in _rows(db, query)]


def list_snapshots(db: Database, limit: int = 20, kind: str | None = None) -> list[Row]:
    """Up to `limit` committed snapshots not forgotten, newest first; only those of `kind` if given."""
    forgotten = select(snapshot_marks.c.snapshot_id).where(snapshot_marks.c.forgotten_at.is_not(None))
    query = (
        select(snapshots)
        .where(snapshots.c.snapshot_id.not_in(forgotten))
        .order_by(snapshots.c.time.desc(), snapshots.c.snapshot_id.desc())
        .limit(limit)
    )
    if kind is not None:
        query = query.where(snapshots.c.kind == kind)
    return _rows(db, query)


def snapshot_marks_of(db: Database) -> dict[str, Row]:
    """Every snapshot that was tagged or forgotten after its backup, by id: its `snapshot_marks` row."""
    return {str(r["snapshot_id"]): r for r in _rows(db, select(snapshot_marks))}


def get_restore_job(db: Database, job_id: str) -> Row | None:
    """The `restore_jobs` row of restore job `job_id`, or None if there is none."""
    rows = _rows(db, select(restore_jobs).where(restore_jobs.c.job_id == job_id))
    return rows[0] if rows else None


def _rows(db: Database, query: Select[Any]) -> list[Row]:
    with _reading(db) as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


@contextmanager
def _reading(db: Database) -> Iterator[Connection]:
    if isinstance(db, Connection):
        yield db
        return
    with database_errors(db), for_reading(db).connect() as conn:
        yield conn


def destination_objects(
    db: Database, destination_id: str, held_only: bool = False
) -> dict[tuple[str, str], Row]:
    """Every object the log says destination `destination_id` holds or held, by (kind, name): its
    `backup_dest_objects` row (`deleted_at` set for one deleted or found missing); `held_only`: only
    those it holds now."""
    t = backup_dest_objects
    query = select(t).where(t.c.destination_id == destination_id)
    if held_only:
        query = query.where(t.c.deleted_at.is_(None))
    rows = _rows(db, query)
    return {(str(r["kind"]), str(r["name"])): r for r in rows}
