"""The read models' tables and their checkpoints, on the event store's metadata.

They live in the log's own database, so that an append and the rows it changes commit together.
Every table can be dropped and rebuilt from the log by `replay`; none holds anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Executable,
    Float,
    Index,
    Integer,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import sqlite

from capsule.orchestrator.db import database_errors
from capsule.orchestrator.eventstore.schema import UTCDateTime, metadata_obj

# Not the event store's key: the two schemas may be created by different processes at once.
SCHEMA_LOCK_KEY = 0x43415053554C46

jobs = Table(
    "jobs",
    metadata_obj,
    Column("job_id", Text, primary_key=True),
    Column("job_type", Text, nullable=False),
    Column("kind", Text),
    Column("source", Text, nullable=False),
    Column("snapshot_id", Text),
    Column("status", Text, nullable=False),
    Column("current_step", Text),
    Column("attempt", Integer),
    Column("progress_done", BigInteger),
    Column("progress_total", BigInteger),
    Column("queued_behind", Text),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("error", Text),
    Column("warnings", BigInteger),
    Column("warning_items", Text),
    Column("actor", Text, nullable=False),
    Column("correlation_id", Text, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("jobs_requested_at_idx", "requested_at"),
    Index("jobs_status_idx", "status"),
    Index("jobs_source_idx", "source"),
    Index("jobs_queued_behind_idx", "queued_behind"),
)

snapshots = Table(
    "snapshots",
    metadata_obj,
    Column("snapshot_id", Text, primary_key=True),
    Column("job_id", Text, nullable=False),
    Column("kind", Text),
    Column("source", Text, nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("files", BigInteger),
    Column("bytes", BigInteger),
    Column("blobs", BigInteger),
    Column("new_blobs", BigInteger),
    Column("new_bytes", BigInteger),
    Column("stored_bytes", BigInteger),
    Column("duration_seconds", Float),
    Index("snapshots_time_idx", "time"),
)

restore_jobs = Table(
    "restore_jobs",
    metadata_obj,
    Column("job_id", Text, primary_key=True),
    Column("snapshot_id", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("force", Boolean, nullable=False),
    Column("check", Boolean, nullable=False),
    Column("status", Text, nullable=False),
    Column("files", BigInteger),
    Column("bytes", BigInteger),
    Column("safety_copy", Text),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("error", Text),
    Index("restore_jobs_requested_at_idx", "requested_at"),
)

backup_settings = Table(
    "backup_settings",
    metadata_obj,
    Column("name", Text, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("changed_values", Text, nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),
    Column("changed_by", Text, nullable=False),
    Column("last_position", BigInteger, nullable=False),
)
"""The settings as of the last change: one row, named `settings` (none before the first change),
holding every value set so far by key, as JSON; the defaults fill in the rest when it is read."""

schedule_runs = Table(
    "schedule_runs",
    metadata_obj,
    Column("schedule", Text, primary_key=True),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("fired_at", UTCDateTime(), nullable=False),
    Column("job_id", Text, nullable=False),
    Column("coalesced", Boolean, nullable=False),
    Column("missed", Integer, nullable=False),
    Column("late_seconds", Float, nullable=False),
    Column("last_position", BigInteger, nullable=False),
)
"""Each schedule's last run: when it was due, when it fired, and the job it started or joined."""

drill_proofs = Table(
    "drill_proofs",
    metadata_obj,
    Column("kind", Text, primary_key=True),
    Column("snapshot_id", Text, nullable=False),
    Column("taken_at", UTCDateTime(), nullable=False),
    Column("job_id", Text, nullable=False),
    Column("proven_at", UTCDateTime(), nullable=False),
    Column("last_position", BigInteger, nullable=False),
)
"""Per snapshot kind, the last snapshot a restore drill proved restorable: when it was taken, and
which drill proved it when."""

snapshot_marks = Table(
    "snapshot_marks",
    metadata_obj,
    Column("snapshot_id", Text, primary_key=True),
    Column("forgotten_at", UTCDateTime()),
    Column("forgotten_by", Text),
    Column("forget_reason", Text),
    Column("forget_rule", Text),
    Column("tags_added", Text, nullable=False),
    Column("tags_removed", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("last_position", BigInteger, nullable=False),
)
"""What happened to a snapshot after its backup (its stream `snapshot-<id>`): when and by whom it
was forgotten and why, and the tags added to and removed from its manifest's, as JSON lists. A
snapshot's row in `snapshots` stays; readers leave out those forgotten here."""

backup_dest_objects = Table(
    "backup_dest_objects",
    metadata_obj,
    Column("object_key", Text, primary_key=True),
    Column("destination_id", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("origin", Text, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    Column("job_id", Text, nullable=False),
    Column("deleted_at", UTCDateTime()),
    Column("last_position", BigInteger, nullable=False),
    Index("backup_dest_objects_destination_idx", "destination_id"),
)
"""Every object each destination holds as the log tells it (its stream `destination-<id>`): sent
by Capsule (`origin` `sent`, which only Capsule may delete) or found by a listing (`found`); a row
whose `deleted_at` is set was deleted there, or found missing by a listing (`origin` `lost`)."""

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata_obj,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
)

PROJECTIONS: tuple[Table, ...] = (
    jobs,
    snapshots,
    restore_jobs,
    backup_settings,
    schedule_runs,
    drill_proofs,
    snapshot_marks,
    backup_dest_objects,
)
"""Every read model, each with a row of the same name in `projection_checkpoints`."""

KEYS: dict[str, str] = {table.name: next(iter(table.primary_key)).name for table in PROJECTIONS}


def create_projection_schema(engine: Engine) -> None:
    """Create the read models and their checkpoints (at position 0) if missing; safe to repeat.

    Tables created on a log that already holds events start behind it; the next append catches
    them up, and `replay` rebuilds them at once.
    """
    with database_errors(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        _drop_outdated(conn)
        metadata_obj.create_all(conn, tables=[*PROJECTIONS, projection_checkpoints])
        present = set(conn.execute(select(projection_checkpoints.c.name)).scalars())
        missing = [{"name": t.name, "position": 0} for t in PROJECTIONS if t.name not in present]
        if missing:
            conn.execute(insert(projection_checkpoints), missing)


def _drop_outdated(conn: Connection) -> None:
    """Drop the read models if an older Capsule made them with other columns: they are rebuilt.

    All of them go, with their checkpoints, so they stay in step: the next append (or `capsule
    replay`) fills them again from the log.
    """
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    outdated = [
        table
        for table in PROJECTIONS
        if table.name in present
        and {c["name"] for c in inspector.get_columns(table.name)} != {c.name for c in table.columns}
    ]
    if not outdated:
        return
    for table in PROJECTIONS:
        if table.name in present:
            table.drop(conn)
    if projection_checkpoints.name in present:
        conn.execute(delete(projection_checkpoints))


def checkpoint(conn: Connection) -> int:
    """The last position every read model has applied (they move together); 0 before the first."""
    positions = checkpoints(conn)
    return min(positions.get(t.name, 0) for t in PROJECTIONS)


def checkpoints(conn: Connection) -> dict[str, int]:
    """The last position applied, per read model."""
    rows = conn.execute(select(projection_checkpoints.c.name, projection_checkpoints.c.position))
    return {name: int(position) for name, position in rows}


def set_checkpoint(conn: Connection, position: int) -> None:
    """Record that every read model has applied the log up to `position`."""
    # An upsert, so that tables made by the log's own create_schema, without their checkpoint
    # rows, start counting here instead of looking forever behind.
    upsert(conn, projection_checkpoints, [{"name": t.name, "position": position} for t in PROJECTIONS])


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` into `table`, replacing the rows with the same primary key."""
    if not rows:
        return
    keys = [c.name for c in table.primary_key]
    others = [c.name for c in table.columns if not c.primary_key]
    statement: Executable
    if conn.dialect.name == "postgresql":
        # Loaded here: importing the PostgreSQL dialect would slow every command's start
        # (see docs/performance.md, "Loading the PostgreSQL dialect").
        from sqlalchemy.dialects import postgresql  # noqa: PLC0415

        pg = postgresql.insert(table)
        statement = pg.on_conflict_do_update(index_elements=keys, set_={c: pg.excluded[c] for c in others})
    else:
        sq = sqlite.insert(table)
        statement = sq.on_conflict_do_update(index_elements=keys, set_={c: sq.excluded[c] for c in others})
    conn.execute(statement, list(rows))
