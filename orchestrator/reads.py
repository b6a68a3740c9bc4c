"""What `capsule status` reads from the event log's database: the read models' rows, the log's
newest position, when it began, and the events of a few streams.

Two readers answer the same questions. `EngineReads` goes through SQLAlchemy, the event store and
the projections' queries, on SQLite and PostgreSQL alike. `SQLiteReads` asks the default SQLite
event log with the standard library's `sqlite3` and the same SQL: SQLAlchemy takes longer to load
than `capsule status` takes to answer. It answers only when it can answer exactly as the other
would: `open_sqlite_reads` gives None (and `SQLiteReads` raises `NotReadable`) for a log that
opening through the event store would first change (create, chain or upgrade) or that does not
read cleanly; the caller then asks `EngineReads`, which makes the change or names the trouble.
tests/integration/test_status_reads.py holds the two to the same answers.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from capsule.orchestrator.eventstore import EventStore
    from capsule.orchestrator.projections.queries import Database
    from capsule.orchestrator.settings import Settings

Row = dict[str, Any]
BACK_PAGE = 64
"""Events read at a time by a reader going back from the end of a stream."""


class Event(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def recorded_at(self) -> datetime: ...


class Reads(Protocol):
    """The questions, as `capsule.orchestrator.projections.queries` and `EventStore` answer them."""

    def list_jobs(self, limit: int = 20, status: str | None = None, job_type: str | None = None) -> list[Row]:
        """Up to `limit` jobs, newest request first, of one status and one type if given."""
        ...

    def list_snapshots(self, limit: int = 20, kind: str | None = None) -> list[Row]:
        """Up to `limit` snapshots not forgotten, newest first; only those of `kind` if given."""
        ...

    def proven_snapshots(self) -> dict[str, Row]:
        """Per snapshot kind, the last snapshot a restore drill proved restorable."""
        ...

    def settings_row(self) -> Row | None:
        """The `backup_settings` row; None before the first change."""
        ...

    def last_position(self) -> int:
        """The position of the newest event; 0 when the log is empty."""
        ...

    def first_recorded_at(self) -> datetime | None:
        """When the first event was recorded; None when the log is empty."""
        ...

    def read_stream(self, stream_id: str) -> Sequence[Event]:
        """The events of a stream, upcast, in version order."""
        ...

    def newest(self, stream_id: str, types: Sequence[str], accept: Callable[[Event], bool]) -> Event | None:
        """The newest event of `types` in a stream that `accept` takes, read back from its end a page
        at a time (a destination's stream grows by every copy: its end is what tells)."""
        ...


class EngineReads:
    """The answers of the projections' queries and the event store, through SQLAlchemy."""

    def __init__(self, db: Database, store: EventStore | None = None) -> None:
        self.db = db
        self.store = store

    def _store(self) -> EventStore:
        if self.store is None:
            raise ValueError("these reads were given no event store")
        return self.store

    def list_jobs(self, limit: int = 20, status: str | None = None, job_type: str | None = None) -> list[Row]:
        from capsule.orchestrator.projections import queries  # noqa: PLC0415 - SQLAlchemy

        return queries.list_jobs(self.db, limit=limit, status=status, job_type=job_type)  # type: ignore[arg-type]

    def list_snapshots(self, limit: int = 20, kind: str | None = None) -> list[Row]:
        from capsule.orchestrator.projections import queries  # noqa: PLC0415

        return queries.list_snapshots(self.db, limit, kind)

    def proven_snapshots(self) -> dict[str, Row]:
        from capsule.orchestrator.projections import queries  # noqa: PLC0415

        return queries.proven_snapshots(self.db)

    def settings_row(self) -> Row | None:
        from capsule.orchestrator.projections import queries  # noqa: PLC0415

        return queries.settings_row(self.db)

    def last_position(self) -> int:
        return self._store().last_position()

    def first_recorded_at(self) -> datetime | None:
        first = self._store().read_all(0, limit=1)
        return first[0].recorded_at if first else None

    def read_stream(self, stream_id: str) -> Sequence[Event]:
        return self._store().read_stream(stream_id)

    def newest(self, stream_id: str, types: Sequence[str], accept: Callable[[Event], bool]) -> Event | None:
        return self._store().newest(stream_id, types, accept)


class NotReadable(Exception):
    """Raised when the SQLite log cannot be read here exactly as the event store would read it."""


# The columns of the read models and of the log, in the order SQLAlchemy's tables list them
# (`capsule.orchestrator.projections.tables`, `capsule.orchestrator.eventstore.schema`); a test
# holds them to those tables.
JOBS = (
    "job_id",
    "job_type",
    "kind",
    "source",
    "snapshot_id",
    "status",
    "current_step",
    "attempt",
    "progress_done",
    "progress_total",
    "queued_behind",
    "requested_at",
    "started_at",
    "finished_at",
    "error",
    "warnings",
    "warning_items",
    "actor",
    "correlation_id",
    "last_position",
    "updated_at",
)
SNAPSHOTS = (
    "snapshot_id",
    "job_id",
    "kind",
    "source",
    "time",
    "files",
    "bytes",
    "blobs",
    "new_blobs",
    "new_bytes",
    "stored_bytes",
    "duration_seconds",
)
DRILL_PROOFS = ("kind", "snapshot_id", "taken_at", "job_id", "proven_at", "last_position")
BACKUP_SETTINGS = ("name", "version", "changed_values", "changed_at", "changed_by", "last_position")
TABLES: dict[str, tuple[str, ...]] = {
    "jobs": JOBS,
    "snapshots": SNAPSHOTS,
    "restore_jobs": (
        "job_id",
        "snapshot_id",
        "target",
        "force",
        "check",
        "status",
        "files",
        "bytes",
        "safety_copy",
        "requested_at",
        "finished_at",
        "error",
    ),
    "backup_settings": BACKUP_SETTINGS,
    "schedule_runs": (
        "schedule",
        "due_at",
        "fired_at",
        "job_id",
        "coalesced",
        "missed",
        "late_seconds",
        "last_position",
    ),
    "drill_proofs": DRILL_PROOFS,
    "snapshot_marks": (
        "snapshot_id",
        "forgotten_at",
        "forgotten_by",
        "forget_reason",
        "forget_rule",
        "tags_added",
        "tags_removed",
        "version",
        "last_position",
    ),
    "backup_dest_objects": (
        "object_key",
        "destination_id",
        "destination",
        "kind",
        "name",
        "size",
        "origin",
        "recorded_at",
        "job_id",
        "deleted_at",
        "last_position",
    ),
    "projection_checkpoints": ("name", "position"),
    "events": (
        "position",
        "stream_id",
        "version",
        "type",
        "schema_version",
        "data",
        "metadata",
        "recorded_at",
    ),
    "event_chain": ("position", "seal", "chain"),
    "event_chain_origin": ("id", "key_id", "chained_after", "chained_at", "seal"),
}
PROJECTIONS = (
    "jobs",
    "snapshots",
    "restore_jobs",
    "backup_settings",
    "schedule_runs",
    "drill_proofs",
    "snapshot_marks",
    "backup_dest_objects",
)
"""The read models that have a checkpoint each."""
GUARDS = tuple(
    f"{table}_refuse_{operation}"
    for table in ("events", "event_chain", "event_chain_origin")
    for operation in ("update", "delete")
)
"""The triggers that keep the log append-only (`capsule.orchestrator.eventstore.schema`)."""
TIMES = frozenset(
    {"requested_at", "started_at", "finished_at", "updated_at", "time", "taken_at", "proven_at", "changed_at"}
)
"""The columns of the tables read here that hold a UTC time."""
SETTINGS_ROW = "settings"
BUSY_TIMEOUT_MS = 30_000


class StoredEvent(NamedTuple):
    type: str
    data: dict[str, Any]
    recorded_at: datetime


def open_sqlite_reads(settings: Settings) -> SQLiteReads | None:
    """Reads of the default SQLite event log, or None where `EngineReads` must answer: another
    event store configured, or a log that opening through the event store would first change."""
    if settings.event_store_url is not None:
        return None
    path = settings.home / "events.db"
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    reads = SQLiteReads(conn)
    try:
        if reads.as_the_event_store_leaves_it():
            return reads
    except (sqlite3.Error, NotReadable):
        pass
    reads.close()
    return None


class SQLiteReads:
    """The same answers as `EngineReads`, from the SQLite log, with the standard library only."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        self.conn.close()

    def as_the_event_store_leaves_it(self) -> bool:
        """Whether opening the log through the event store would change nothing: in WAL mode,
        every table there with the columns this Capsule gives it, the guards in place, the chain
        begun and every read model's checkpoint recorded."""
        conn = self.conn
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            return False
        for table, columns in TABLES.items():
            present = {str(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")')}
            if present != set(columns):
                return False
        triggers = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        if not set(GUARDS) <= triggers:
            return False
        if conn.execute("SELECT count(*) FROM event_chain_origin").fetchone()[0] != 1:
            return False
        checkpoints = {str(r[0]) for r in conn.execute("SELECT name FROM projection_checkpoints")}
        return set(PROJECTIONS) <= checkpoints

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self.conn
        except (sqlite3.Error, ValueError, TypeError, KeyError) as e:
            raise NotReadable(str(e)) from e

    def _rows(
        self, table: str, columns: Sequence[str], where: str = "", args: Sequence[Any] = ()
    ) -> list[Row]:
        listed = ", ".join(f'"{c}"' for c in columns)
        with self._reading() as conn:
            found = conn.execute(f'SELECT {listed} FROM "{table}" {where}', args).fetchall()  # noqa: S608
            return [{c: _value(c, v) for c, v in zip(columns, row, strict=True)} for row in found]

    def list_jobs(self, limit: int = 20, status: str | None = None, job_type: str | None = None) -> list[Row]:
        tests, args = [], []
        for column, value in (("status", status), ("job_type", job_type)):
            if value is not None:
                tests.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(tests)} " if tests else ""
        order = "ORDER BY requested_at DESC, job_id DESC LIMIT ?"
        return self._rows("jobs", JOBS, where + order, [*args, limit])

    def list_snapshots(self, limit: int = 20, kind: str | None = None) -> list[Row]:
        forgotten = "SELECT snapshot_id FROM snapshot_marks WHERE forgotten_at IS NOT NULL"
        where = f"WHERE snapshot_id NOT IN ({forgotten}) "
        args: list[Any] = []
        if kind is not None:
            where += "AND kind = ? "
            args.append(kind)
        order = "ORDER BY time DESC, snapshot_id DESC LIMIT ?"
        return self._rows("snapshots", SNAPSHOTS, where + order, [*args, limit])

    def proven_snapshots(self) -> dict[str, Row]:
        return {str(r["kind"]): r for r in self._rows("drill_proofs", DRILL_PROOFS)}

    def settings_row(self) -> Row | None:
        rows = self._rows("backup_settings", BACKUP_SETTINGS, "WHERE name = ?", [SETTINGS_ROW])
        return rows[0] if rows else None

    def last_position(self) -> int:
        with self._reading() as conn:
            return int(conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0])

    def first_recorded_at(self) -> datetime | None:
        first = self._events("WHERE position > 0 ORDER BY position LIMIT 1", ())
        return first[0].recorded_at if first else None

    def read_stream(self, stream_id: str) -> Sequence[Event]:
        return self._events("WHERE stream_id = ? ORDER BY version", (stream_id,))

    def newest(self, stream_id: str, types: Sequence[str], accept: Callable[[Event], bool]) -> Event | None:
        where = f"WHERE stream_id = ? AND type IN ({', '.join('?' for _ in types)}) "
        before: list[int] = []
        while True:
            versions: list[int] = []
            page = self._events(
                where + ("AND version < ? " if before else "") + "ORDER BY version DESC LIMIT ?",
                (stream_id, *types, *before, BACK_PAGE),
                versions,
            )
            if not page:
                return None
            found = next((event for event in page if accept(event)), None)
            if found is not None:
                return found
            before = [versions[-1]]

    def _events(
        self, where: str, args: Sequence[Any], versions: list[int] | None = None
    ) -> list[StoredEvent]:
        """The events `where` picks, upcast; their versions appended to `versions` if given."""
        from capsule.orchestrator.errors import UnknownSchemaVersion  # noqa: PLC0415
        from capsule.orchestrator.upcasters import upcasters  # noqa: PLC0415

        registry = upcasters()
        found = []
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT type, schema_version, data, recorded_at, version FROM events {where}",  # noqa: S608
                args,
            )
            for type_, schema_version, data, recorded_at, version in rows.fetchall():
                if versions is not None:
                    versions.append(int(version))
                try:
                    upcast = registry.upcast(type_, schema_version, json.loads(data))
                except UnknownSchemaVersion as e:  # the event store says so, with the event's position
                    raise NotReadable(str(e)) from e
                found.append(StoredEvent(type_, upcast, _time(recorded_at)))
        return found


def _value(column: str, value: Any) -> Any:
    return _time(value) if column in TIMES and value is not None else value


def _time(value: Any) -> datetime:
    # As SQLAlchemy's UTCDateTime reads SQLite's text: naive, in UTC.
    if not isinstance(value, str):
        raise TypeError(f"a time stored as {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.utcoffset() is None else parsed.astimezone(UTC)
