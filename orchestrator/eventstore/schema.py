"""The events table, its chain, and the guards that make the database refuse to change or remove an event.

`metadata_obj` is shared: projections add their tables to it so that `create_schema` makes them in
the same database, where an append and its inline projections commit in one transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from capsule.orchestrator.db import database_errors

if TYPE_CHECKING:
    from capsule.orchestrator.eventstore.chain import ChainKeyFile

APPEND_ONLY_MESSAGE = "events are append-only"
# Any fixed number: it only keeps two processes from creating the schema at the same moment.
SCHEMA_LOCK_KEY = 0x43415053554C45

metadata_obj = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored in UTC and read back aware, also on SQLite, which keeps no time zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"a timestamp to store must carry its time zone, got {value.isoformat()}")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


class JSONDocument(TypeDecorator[Any]):
    """JSON; JSONB on PostgreSQL, so that projections and ad hoc queries can look inside payloads.

    The PostgreSQL dialect is imported only when it is in use: loading it would slow the start of
    every command on SQLite (see docs/performance.md, "Loading the PostgreSQL dialect").
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB  # noqa: PLC0415

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


events = Table(
    "events",
    metadata_obj,
    # AUTOINCREMENT on SQLite: a plain rowid can be reused after the last row is gone, and a reused
    # position would hide events from a reader that remembers the last position it saw.
    Column(
        "position",
        BigInteger().with_variant(Integer(), "sqlite"),
        Identity(always=True),
        primary_key=True,
    ),
    Column("stream_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("data", JSONDocument(), nullable=False),
    Column("metadata", JSONDocument(), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    # Optimistic concurrency rests on this constraint. Its index starts with stream_id, so it also
    # serves every read by stream; a separate index on stream_id would only slow appends down.
    UniqueConstraint("stream_id", "version", name="events_stream_id_version_key"),
    CheckConstraint("version >= 1", name="events_version_check"),
    CheckConstraint("schema_version >= 1", name="events_schema_version_check"),
    sqlite_autoincrement=True,
)

# The seal and chain of each event (orchestrator/eventstore/chain.py), in a table of their own: an
# event's position is known only once it is inserted, and an events row is never updated.
event_chain = Table(
    "event_chain",
    metadata_obj,
    Column(
        "position",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("seal", LargeBinary, nullable=False),
    Column("chain", LargeBinary, nullable=False),
)

# One row once the log is chained: the key's id, the last position written before the chain began
# (0 when the log was chained from its start) and when it began, sealed with the key.
event_chain_origin = Table(
    "event_chain_origin",
    metadata_obj,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("key_id", Text, nullable=False),
    Column("chained_after", BigInteger, nullable=False),
    Column("chained_at", UTCDateTime(), nullable=False),
    Column("seal", LargeBinary, nullable=False),
    CheckConstraint("id = 1", name="event_chain_origin_one_row"),
)

APPEND_ONLY_TABLES = ("events", "event_chain", "event_chain_origin")

SQLITE_GUARDS = [
    f"""CREATE TRIGGER IF NOT EXISTS {table}_refuse_{operation.lower()} BEFORE {operation} ON {table}
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"""
    for table in APPEND_ONLY_TABLES
    for operation in ("UPDATE", "DELETE")
]
SQLITE_GUARD_NAMES = frozenset(
    f"{table}_refuse_{operation}" for table in APPEND_ONLY_TABLES for operation in ("update", "delete")
)

POSTGRESQL_GUARD_BODY = f"""
BEGIN
    RAISE EXCEPTION USING MESSAGE = '{APPEND_ONLY_MESSAGE}: ' || TG_OP || ' refused';
END
"""
POSTGRESQL_GUARD_FUNCTION = (
    "CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql "
    f"AS $${POSTGRESQL_GUARD_BODY}$$"
)

POSTGRESQL_GUARDS = {
    f"{table}_refuse_{name}": f"{timing} ON {table} {level}"
    for table in APPEND_ONLY_TABLES
    for name, timing, level in (
        ("update", "BEFORE UPDATE", "FOR EACH ROW"),
        ("delete", "BEFORE DELETE", "FOR EACH ROW"),
        # TRUNCATE fires no row triggers, so it needs its own.
        ("truncate", "BEFORE TRUNCATE", "FOR EACH STATEMENT"),
    )
}


def create_schema(engine: Engine, *, chain_key: ChainKeyFile | None = None) -> None:
    """Create the events table, its guards and every table added to `metadata_obj`; safe to repeat.

    With `chain_key`, a log that is not chained yet is chained in the same transaction: its key
    file is created if missing, the events it holds are sealed, and the chain's origin is recorded.
    """
    with database_errors(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes starting together would otherwise both find a table missing and both
            # try to create it. SQLite's BEGIN IMMEDIATE already lets one through at a time.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        metadata_obj.create_all(conn)
        if conn.dialect.name == "postgresql":
            _create_postgresql_guards(conn)
        else:
            for statement in SQLITE_GUARDS:
                conn.exec_driver_sql(statement)
        if chain_key is not None:
            from capsule.orchestrator.eventstore.chain import start_chain  # noqa: PLC0415 - it reads these tables

            start_chain(conn, chain_key, datetime.now(UTC))


def _create_postgresql_guards(conn: Connection) -> None:
    conn.exec_driver_sql(POSTGRESQL_GUARD_FUNCTION)
    # CREATE OR REPLACE TRIGGER needs PostgreSQL 14; looking first works on every supported version.
    present = set(
        conn.execute(
            text("SELECT tgname FROM pg_trigger WHERE tgrelid = ANY(CAST(:tables AS regclass[]))"),
            {"tables": list(APPEND_ONLY_TABLES)},
        ).scalars()
    )
    for name, timing in POSTGRESQL_GUARDS.items():
        if name not in present:
            conn.exec_driver_sql(f"CREATE TRIGGER {name} {timing} EXECUTE FUNCTION events_refuse_change()")
