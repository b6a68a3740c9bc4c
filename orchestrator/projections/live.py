"""The inline projection: the read models change in the same transaction as the events they show.

`ProjectionHandler` is given to `EventStore.append(handlers=...)`. It folds the appended events into
the rows they touch and moves the checkpoint, so a reader never sees an event without its rows or
rows without their event. An append made without the handler leaves the read models behind; the
next append through it first applies what they missed, so they never skip an event.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, func, select

from capsule.orchestrator import codec
from capsule.orchestrator.eventstore import EventStore, StoredEvent, Upcasters, events
from capsule.orchestrator.projections.projector import Projector
from capsule.orchestrator.projections.rows import Row
from capsule.orchestrator.projections.tables import (
    KEYS,
    PROJECTIONS,
    checkpoint,
    set_checkpoint,
    snapshot_marks,
    upsert,
)

CATCH_UP_BATCH = 1000
PREFETCH_BATCH = 500


class _Database:
    """What the live projector has not been given, read from the append's own transaction."""

    def __init__(self, conn: Connection, reader: EventStore) -> None:
        self._conn = conn
        self._reader = reader
        self._tables = {t.name: t for t in PROJECTIONS}

        self._read: dict[tuple[str, str], Row | None] = {}

    def prefetch(self, table: str, keys: Iterable[str]) -> None:
        """Read the rows of `table` with these keys now, a few queries for all of them rather than
        one each: the rows stay as read, since the handler writes them only at its end."""
        t = self._tables[table]
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), PREFETCH_BATCH):
            page = wanted[start : start + PREFETCH_BATCH]
            found = self._conn.execute(select(t).where(t.c[KEYS[table]].in_(page))).mappings().all()
            by_key = {str(row[KEYS[table]]): dict(row) for row in found}
            self._read.update(((table, key), by_key.get(key)) for key in page)

    def row(self, table: str, key: str) -> Row | None:
        if (table, key) in self._read:
            return self._read[table, key]
        t = self._tables[table]
        found = self._conn.execute(select(t).where(t.c[KEYS[table]] == key)).mappings().first()
        return dict(found) if found is not None else None

    def events_before(self, stream_id: str, version: int) -> list[StoredEvent]:
        stream = self._reader.read_stream(stream_id, conn=self._conn)
        return [e for e in stream if e.version < version]


class ProjectionHandler:
    """An `EventStore` handler that writes the read models inside the append's transaction."""

    def __init__(self, upcasters: Upcasters | None = None) -> None:
        self._upcasters = upcasters if upcasters is not None else codec.upcasters()

    def __call__(self, conn: Connection, stored: list[StoredEvent]) -> None:
        if not stored:
            return
        reader = EventStore(conn.engine, upcasters=self._upcasters)
        database = _Database(conn, reader)
        projector = Projector(database)
        marked = {
            e.stream_id.removeprefix(codec.SNAPSHOT_STREAM_PREFIX)
            for e in stored
            if e.stream_id.startswith(codec.SNAPSHOT_STREAM_PREFIX)
        }
        if len(marked) > 1:
            # A forget appends one event to each snapshot it forgets, all at once.
            database.prefetch(snapshot_marks.name, marked)
        applied = checkpoint(conn)
        first = stored[0].position
        previous = conn.execute(select(func.max(events.c.position)).where(events.c.position < first))
        missed_up_to = previous.scalar_one() or 0
        # Appends are serialised (the write lock on SQLite, a table lock on PostgreSQL), so every
        # event below this append's first position has committed: none can appear later.
        while applied < missed_up_to:
            page = reader.read_all(applied, CATCH_UP_BATCH, conn=conn)
            if not page:
                break
            for event in page:
                if event.position > missed_up_to:
                    break
                projector.apply(event)
                applied = event.position
        for event in stored:
            if event.position > applied:
                projector.apply(event)
        for table in PROJECTIONS:
            upsert(conn, table, list(projector.rows[table.name].values()))
        set_checkpoint(conn, max(applied, stored[-1].position))


def project(conn: Connection, stored: list[StoredEvent]) -> None:
    """Apply appended events to the read models in `conn`'s transaction, as the handler does."""
    ProjectionHandler()(conn, stored)
