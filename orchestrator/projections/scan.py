"""Reading the whole log fast, for replay: the store's rows without the cost of its general reader.

`EventStore.read_all` builds each event through SQLAlchemy's result processing, which costs more
than the parsing itself; over a million events that is most of a replay (see docs/performance.md,
"Replay reads the log without SQLAlchemy's result processing"). This reader takes
the driver's values as they come (JSON text on SQLite, already decoded on PostgreSQL), parses them
once, shares one Metadata per distinct value, and upcasts exactly as the store does, so the events
it returns equal the store's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, type_coerce
from sqlalchemy.types import NullType

from capsule.orchestrator.errors import UnknownSchemaVersion
from capsule.orchestrator.eventstore import Metadata, StoredEvent, Upcasters, events


def _raw(column: Any) -> Any:
    return type_coerce(column, NullType()).label(column.name)


_COLUMNS = (
    events.c.position,
    events.c.stream_id,
    events.c.version,
    events.c.type,
    events.c.schema_version,
    _raw(events.c.data),
    _raw(events.c.metadata),
    _raw(events.c.recorded_at),
)


class Scan:
    """Pages of the log in position order, read on `conn` and upcast with `upcasters`.

    With `keep`, only the events of the streams it accepts are parsed and returned; `read` counts
    every row it went past in `rows_read` all the same.
    """

    def __init__(
        self, conn: Connection, upcasters: Upcasters, keep: Callable[[str], bool] | None = None
    ) -> None:
        self._conn = conn
        self._upcasters = upcasters
        self._keep = keep
        self._metadata: dict[Any, Metadata] = {}
        self.rows_read = 0

    def pages(self, until: int, batch: int) -> Iterator[list[StoredEvent]]:
        """The events up to position `until`, `batch` rows of the log at a time."""
        after = 0
        while after < until:
            query = (
                select(*_COLUMNS)
                .where(events.c.position > after, events.c.position <= until)
                .order_by(events.c.position)
                .limit(batch)
            )
            rows = self._conn.execute(query).all()
            if not rows:
                return
            self.rows_read += len(rows)
            after = rows[-1][0]
            keep = self._keep
            yield [self._stored(row) for row in rows if keep is None or keep(row[1])]

    def _stored(self, row: tuple[Any, ...]) -> StoredEvent:
        position, stream_id, version, type_, schema_version, data, metadata, recorded_at = row
        try:
            upcast = self._upcasters.upcast(type_, schema_version, _json(data))
        except UnknownSchemaVersion as e:
            raise UnknownSchemaVersion(f"{e} (event at position {position})") from e
        return StoredEvent(
            position=position,
            stream_id=stream_id,
            version=version,
            type=type_,
            schema_version=self._upcasters.latest(type_),
            data=upcast,
            metadata=self._meta(metadata),
            recorded_at=_utc(recorded_at),
        )

    def _meta(self, raw: Any) -> Metadata:
        # A job's events mostly share one actor and correlation id, so most lookups hit.
        key = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)
        found = self._metadata.get(key)
        if found is None:
            found = self._metadata[key] = Metadata.from_dict(_json(raw))
        return found


def _json(raw: Any) -> Any:
    return json.loads(raw) if isinstance(raw, str | bytes) else raw


def _utc(raw: Any) -> datetime:
    # SQLite keeps the UTC time as text without a zone (UTCDateTime writes it so); PostgreSQL's
    # driver gives an aware datetime in the session's time zone.
    moment = datetime.fromisoformat(raw) if isinstance(raw, str) else raw
    if not isinstance(moment, datetime):
        raise TypeError(f"the log's recorded_at holds {type(raw).__name__}, not a time")
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)
