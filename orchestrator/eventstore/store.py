"""The append-only event store: optimistic appends per stream, reads by stream or by global position."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select, func, insert, or_, select
from sqlalchemy.exc import IntegrityError

from capsule.orchestrator.db import database_errors, for_reading
from capsule.orchestrator.errors import ConcurrencyConflict, EventLogKeyError, UnknownSchemaVersion
from capsule.orchestrator.eventstore.chain import ChainKeyFile, check_key, origin_key_id, sealing_for_append
from capsule.orchestrator.eventstore.model import Handler, Metadata, NewEvent, StoredEvent, as_json_object
from capsule.orchestrator.eventstore.schema import events
from capsule.orchestrator.eventstore.upcasting import Upcasters
from capsule.orchestrator.reads import BACK_PAGE

UNIQUE_VIOLATION = "23505"
# Streams whose versions one query reads: well under the bound parameters SQLite allows.
VERSIONS_BATCH = 500

# Prebuilt, so that SQLAlchemy compiles it once.
_INSERT_EVENTS = insert(events).returning(events.c.position, events.c.stream_id, events.c.version)


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventStore:
    """Appends events to streams and reads them back, upcast to the newest schema version.

    Every stream has versions 1, 2, 3, ... and every event a global `position` that increases with
    commit order: a reader that remembers the last position it saw and asks for what follows never
    misses an event, on SQLite and on PostgreSQL alike.

    With `chain_key`, every append seals its events and links them to the chain (chain.py); a log
    that is not chained yet is chained by the first such append. Without it, the store reads any
    log but appends only to one that is not chained.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        upcasters: Upcasters | None = None,
        clock: Callable[[], datetime] | None = None,
        chain_key: ChainKeyFile | None = None,
    ) -> None:
        self._engine = engine
        self._chain_key = chain_key
        self._reader = for_reading(engine)
        self._upcasters = upcasters if upcasters is not None else Upcasters()
        self._clock = clock or utc_now

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends and rolled back if it raises.

        For command handlers that read the stream or projections and append atomically: pass the
        connection to the reads and to `append(conn=...)`. On SQLite it holds the write lock from
        the start, so keep it short and do no network or disk-heavy work inside.
        """
        with database_errors(self._engine), self._engine.begin() as conn:
            yield conn

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[NewEvent],
        metadata: Metadata,
        *,
        handlers: Sequence[Handler] = (),
        conn: Connection | None = None,
    ) -> list[StoredEvent]:
        """Append `events` as versions `expected_version + 1, ...` of the stream, atomically.

        Each handler runs in the same transaction, after the inserts; if one raises, nothing is
        appended. With `conn`, the append joins that transaction (inside a savepoint, so a failed
        append leaves nothing behind in it either). Raises `ConcurrencyConflict` when the stream is
        no longer at `expected_version` (0 for a new stream).
        """
        appends = [(stream_id, expected_version, events)]
        return self.append_streams(appends, metadata, handlers=handlers, conn=conn)

    def append_streams(
        self,
        appends: Sequence[tuple[str, int, Sequence[NewEvent]]],
        metadata: Metadata,
        *,
        handlers: Sequence[Handler] = (),
        conn: Connection | None = None,
    ) -> list[StoredEvent]:
        """Append to several streams at once, all or nothing: each `(stream_id, expected_version,
        events)` as `append` would, in the order given, with one metadata.

        The same few statements whatever the number of streams: one read of their versions, one of
        the chain's head, one insert of the events and one of their seals (SQLAlchemy may split a
        long insert into pages). Raises `ConcurrencyConflict` for the first stream that is no longer
        at its expected version, and then appends nothing. A stream may appear once.
        """
        seen: set[str] = set()
        for stream_id, expected_version, _ in appends:
            if not stream_id:
                raise ValueError("a stream needs an id")
            if expected_version < 0:
                raise ValueError(f"an expected version is 0 or more, not {expected_version}")
            if stream_id in seen:
                raise ValueError(f"stream {stream_id!r} appears twice in one append; give its events at once")
            seen.add(stream_id)
        appends = [a for a in appends if a[2]]
        if not appends:
            return []
        for _, _, new_events in appends:
            for new in new_events:
                self._check_newest(new)
        recorded_at = self._now()
        meta = as_json_object(metadata.as_dict(), "event metadata")
        expected = {stream_id: version for stream_id, version, _ in appends}
        rows = [
            {
                "stream_id": stream_id,
                "version": expected_version + offset,
                "type": new.type,
                "schema_version": new.schema_version,
                "data": as_json_object(new.data, f"the data of event {new.type!r}"),
                "metadata": meta,
                "recorded_at": recorded_at,
            }
            for stream_id, expected_version, new_events in appends
            for offset, new in enumerate(new_events, start=1)
        ]
        if conn is None:
            with self.transaction() as own:
                return self._append(own, expected, rows, metadata=metadata, handlers=handlers)
        with database_errors(self._engine), conn.begin_nested():
            return self._append(conn, expected, rows, metadata=metadata, handlers=handlers)

    def _append(
        self,
        conn: Connection,
        expected: dict[str, int],
        rows: list[dict[str, Any]],
        *,
        metadata: Metadata,
        handlers: Sequence[Handler],
    ) -> list[StoredEvent]:
        if conn.dialect.name == "postgresql":
            # A bigserial position is drawn at insert but becomes visible at commit, so without this
            # lock appends could commit out of position order: a reader at position 7 could pass
            # over 6, still uncommitted, and never see it. EXCLUSIVE mode lets one append at a time
            # insert (until its commit), so positions become visible in order; plain reads, which
            # take ACCESS SHARE, are not blocked. Locking the table rather than an advisory key also
            # waits for any other writer's uncommitted INSERT. The lock lasts until the outermost
            # transaction ends, which is one more reason to keep those short. On SQLite, BEGIN
            # IMMEDIATE already lets one writer in at a time.
            table = conn.dialect.identifier_preparer.format_table(events)
            conn.exec_driver_sql(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        current = self._versions(conn, list(expected))
        for stream_id, expected_version in expected.items():
            if current.get(stream_id, 0) != expected_version:
                raise ConcurrencyConflict(stream_id, expected_version, current.get(stream_id, 0))
        sealing = sealing_for_append(conn, self._chain_key, rows[0]["recorded_at"])
        try:
            # Matched by (stream, version) rather than asked back in the order given: SQLAlchemy keeps
            # that order on SQLite only by inserting one row per statement.
            inserted = conn.execute(_INSERT_EVENTS, rows).all()
        except IntegrityError as e:
            # Not reached while every writer goes through this class (the check above sees every
            # committed append); kept for writers that do not, or a caller's snapshot isolation.
            if _is_duplicate_version(e):
                stream_id, expected_version = next(iter(expected.items()))
                raise ConcurrencyConflict(
                    stream_id if len(expected) == 1 else "one of the streams", expected_version, None
                ) from e
            raise
        where = {(stream_id, version): position for position, stream_id, version in inserted}
        positions = [where[row["stream_id"], row["version"]] for row in rows]
        if sealing is not None:
            sealing.write(conn, sorted(zip(positions, rows, strict=True), key=lambda pair: pair[0]))
        stored = [
            StoredEvent(
                position=position,
                stream_id=row["stream_id"],
                version=row["version"],
                type=row["type"],
                schema_version=row["schema_version"],
                data=row["data"],
                metadata=metadata,
                recorded_at=row["recorded_at"],
            )
            for position, row in zip(positions, rows, strict=True)
        ]
        for handler in handlers:
            handler(conn, list(stored))
        return stored

    def check_chain_key(self) -> None:
        """Raise `EventLogKeyError` now if an append would: the log is chained, this store lacks its key."""
        with database_errors(self._engine), self._reader.connect() as conn:
            chained_with = origin_key_id(conn)
        if chained_with is None:
            return
        if self._chain_key is None:
            raise EventLogKeyError(
                "this event log is chained: appending to it needs its key file (event-log.key under "
                "CAPSULE_HOME, or CAPSULE_EVENT_LOG_KEY_FILE)"
            )
        check_key(self._chain_key, chained_with)

    def read_stream(
        self, stream_id: str, after_version: int = 0, *, conn: Connection | None = None
    ) -> list[StoredEvent]:
        """The events of a stream with a version above `after_version`, in version order."""
        query = (
            select(events)
            .where(events.c.stream_id == stream_id, events.c.version > after_version)
            .order_by(events.c.version)
        )
        return [self._stored(row) for row in self._rows(query, conn)]

    def read_stream_back(
        self,
        stream_id: str,
        types: Sequence[str],
        before_version: int | None = None,
        limit: int = BACK_PAGE,
        *,
        conn: Connection | None = None,
    ) -> list[StoredEvent]:
        """Up to `limit` events of `types` in a stream, newest first, below `before_version` if
        given: what a reader wanting only the end of a long stream asks, a page at a time."""
        query = select(events).where(events.c.stream_id == stream_id, events.c.type.in_(list(types)))
        if before_version is not None:
            query = query.where(events.c.version < before_version)
        return [
            self._stored(row)
            for row in self._rows(query.order_by(events.c.version.desc()).limit(limit), conn)
        ]

    def newest(
        self, stream_id: str, types: Sequence[str], accept: Callable[[StoredEvent], bool] = lambda _e: True
    ) -> StoredEvent | None:
        """The newest event of `types` in a stream that `accept` takes, read back a page at a time."""
        before: int | None = None
        while page := self.read_stream_back(stream_id, types, before):
            for event in page:
                if accept(event):
                    return event
            before = page[-1].version
        return None

    def stream_version(self, stream_id: str, *, conn: Connection | None = None) -> int:
        """The version of the stream's last event; 0 for a stream with no events."""
        if conn is not None:
            with database_errors(self._engine):
                return self._version(conn, stream_id)
        with database_errors(self._engine), self._reader.connect() as own:
            return self._version(own, stream_id)

    def stream_versions(self, stream_ids: Sequence[str], *, conn: Connection | None = None) -> dict[str, int]:
        """The version of each stream's last event, read together; 0 for a stream with no events."""
        ids = list(dict.fromkeys(stream_ids))
        if conn is not None:
            with database_errors(self._engine):
                found = self._versions(conn, ids)
        else:
            with database_errors(self._engine), self._reader.connect() as own:
                found = self._versions(own, ids)
        return {stream_id: found.get(stream_id, 0) for stream_id in ids}

    def read_all(
        self,
        after_position: int = 0,
        limit: int = 1000,
        *,
        since: datetime | None = None,
        of_job: str | None = None,
        conn: Connection | None = None,
    ) -> list[StoredEvent]:
        """Up to `limit` events of every stream with a position above `after_position`, in position
        order; only those recorded at or after `since`, and only those of job `of_job` (its
        correlation id, or a stream named after it), when given: the database skips the others
        without their being decoded here."""
        if limit < 1:
            raise ValueError(f"a limit is 1 or more, not {limit}")
        query = select(events).where(events.c.position > after_position)
        if since is not None:
            query = query.where(events.c.recorded_at >= since)
        if of_job is not None:
            query = query.where(
                or_(
                    events.c.metadata["correlation_id"].as_string() == of_job,
                    events.c.stream_id.endswith(f"-{of_job}", autoescape=True),
                )
            )
        return [self._stored(row) for row in self._rows(query.order_by(events.c.position).limit(limit), conn)]

    def last_position(self, *, conn: Connection | None = None) -> int:
        """The position of the newest event in the log; 0 when it is empty."""
        query = select(func.coalesce(func.max(events.c.position), 0))
        rows = self._rows(query, conn)
        return int(rows[0][0])

    def _rows(self, query: Select[Any], conn: Connection | None) -> Sequence[Row[Any]]:
        with database_errors(self._engine):
            if conn is not None:
                return conn.execute(query).all()
            with self._reader.connect() as own:
                return own.execute(query).all()

    def _versions(self, conn: Connection, stream_ids: list[str]) -> dict[str, int]:
        """The version of each stream that has events; one query for up to VERSIONS_BATCH streams."""
        if len(stream_ids) == 1:
            return {stream_ids[0]: self._version(conn, stream_ids[0])}
        found: dict[str, int] = {}
        for start in range(0, len(stream_ids), VERSIONS_BATCH):
            query = (
                select(events.c.stream_id, func.max(events.c.version))
                .where(events.c.stream_id.in_(stream_ids[start : start + VERSIONS_BATCH]))
                .group_by(events.c.stream_id)
            )
            found.update((str(stream_id), int(version)) for stream_id, version in conn.execute(query))
        return found

    def _version(self, conn: Connection, stream_id: str) -> int:
        query = select(func.coalesce(func.max(events.c.version), 0)).where(events.c.stream_id == stream_id)
        return int(conn.execute(query).scalar_one())

    def _stored(self, row: Row[Any]) -> StoredEvent:
        try:
            data = self._upcasters.upcast(row.type, row.schema_version, row.data)
        except UnknownSchemaVersion as e:
            raise UnknownSchemaVersion(f"{e} (event at position {row.position})") from e
        return StoredEvent(
            position=row.position,
            stream_id=row.stream_id,
            version=row.version,
            type=row.type,
            schema_version=self._upcasters.latest(row.type),
            data=data,
            metadata=Metadata.from_dict(row.metadata),
            recorded_at=row.recorded_at,
        )

    def _check_newest(self, new: NewEvent) -> None:
        # An older shape would be upcast on every read for no reason; a newer one could not be read.
        latest = self._upcasters.latest(new.type)
        if new.schema_version != latest:
            raise UnknownSchemaVersion(
                f"event type {new.type!r} is appended at schema version {new.schema_version}, but its "
                f"upcasters lead to version {latest}; append the newest shape, or register the upcasters"
            )

    def _now(self) -> datetime:
        now = self._clock()
        if now.utcoffset() is None:
            raise ValueError(f"the event store's clock must give aware times, got {now.isoformat()}")
        return now.astimezone(UTC)


def _is_duplicate_version(error: IntegrityError) -> bool:
    if getattr(error.orig, "sqlstate", None) == UNIQUE_VIOLATION:
        return True
    return "UNIQUE constraint failed: events.stream_id, events.version" in str(error.orig)
