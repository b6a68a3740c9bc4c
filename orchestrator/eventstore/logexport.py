"""The whole event log as one document: exported from a log, checked against its chain, imported
into a new, empty log.

An export holds every event row exactly as stored (not upcast), its seal and chain, the record of
where the chain begins, and the chain's key: a copy that is checked with the key it carries proves
only that it is whole and in order, so it is worth no more than the seal put around it (the
repository key, `capsule.orchestrator.usecases.logcopy`). Imported, it gives a log whose every
event, seal and position is the original's, so `capsule audit --verify` holds on it with the same
head.

The document is JSON lines, UTF-8: a header object, then one array per event in position order,
`[position, stream_id, version, type, schema_version, data, metadata, recorded_at, seal, chain]`
(seal and chain in hex, the time in UTC with microseconds). docs/repository-format.md, "The copy
of the event log", describes it for readers without Capsule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from capsule.domain.errors import Category
from capsule.orchestrator.db import database_errors, for_reading
from capsule.orchestrator.errors import EventLogKeyError, EventLogTampered
from capsule.orchestrator.eventstore.chain import GENESIS, ChainKey, content, utc_text
from capsule.orchestrator.eventstore.schema import event_chain, event_chain_origin, events

FORMAT = "capsule-event-log"
VERSION = 1
PAGE = 5000
INSERT_BATCH = 5000


class LogCopyInvalid(EventLogTampered):
    """Raised when an exported log does not hold together: a malformed document, or an event that
    does not match its seal or its chain."""

    category = Category.DAMAGED


@dataclass(frozen=True)
class Origin:
    key_id: str
    chained_after: int
    chained_at: datetime
    seal: bytes


@dataclass(frozen=True)
class LogExport:
    """Every event of a log with its seal and chain, where the chain begins, and the key."""

    key: ChainKey
    origin: Origin
    rows: list[dict[str, Any]] = field(repr=False)
    """Each an `events` row (position included) with its `seal` and `chain` bytes."""

    @property
    def head_position(self) -> int:
        return int(self.rows[-1]["position"]) if self.rows else 0

    @property
    def head(self) -> str:
        """The chain of the last event, in hex; empty for a log without events."""
        return bytes(self.rows[-1]["chain"]).hex() if self.rows else ""

    def to_bytes(self, repository_id: str, written_at: datetime) -> bytes:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "repository": repository_id,
            "written_at": utc_text(written_at),
            "events": len(self.rows),
            "head_position": self.head_position,
            "head": self.head,
            "chain_key": self.key.secret.hex(),
            "origin": {
                "key_id": self.origin.key_id,
                "chained_after": self.origin.chained_after,
                "chained_at": utc_text(self.origin.chained_at),
                "seal": self.origin.seal.hex(),
            },
        }
        lines = [_dumps(header)]
        lines.extend(
            _dumps(
                [
                    r["position"],
                    r["stream_id"],
                    r["version"],
                    r["type"],
                    r["schema_version"],
                    r["data"],
                    r["metadata"],
                    utc_text(r["recorded_at"]),
                    bytes(r["seal"]).hex(),
                    bytes(r["chain"]).hex(),
                ]
            )
            for r in self.rows
        )
        return "\n".join(lines).encode() + b"\n"


@dataclass(frozen=True)
class Parsed:
    """An export read back, with what its header says of itself."""

    export: LogExport
    repository: str
    written_at: datetime


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def log_head(engine: Engine) -> tuple[int, str]:
    """The position of the log's last sealed event and its chain in hex; (0, "") for none. One
    indexed read: what a copier compares with the copies there before it exports anything."""
    query = (
        select(event_chain.c.position, event_chain.c.chain).order_by(event_chain.c.position.desc()).limit(1)
    )
    with database_errors(engine), for_reading(engine).connect() as conn:
        row = conn.execute(query).first()
    return (0, "") if row is None else (int(row.position), bytes(row.chain).hex())


def export_log(engine: Engine, key: ChainKey) -> LogExport:
    """Read the whole log in one snapshot, checked against its chain as it is read."""
    with database_errors(engine), for_reading(engine).connect() as conn, conn.begin():
        found = conn.execute(select(event_chain_origin)).first()
        if found is None:
            raise EventLogKeyError(
                "the event log is not chained yet, so no copy of it can be checked: open it once with its "
                "key (any capsule command does) and copy it again"
            )
        origin = Origin(found.key_id, found.chained_after, found.chained_at, bytes(found.seal))
        export = LogExport(key, origin, list(_rows(conn)))
    check(export)
    return export


def _rows(conn: Connection) -> Iterator[dict[str, Any]]:
    after = 0
    query = select(events, event_chain.c.seal, event_chain.c.chain).outerjoin(
        event_chain, event_chain.c.position == events.c.position
    )
    while page := conn.execute(
        query.where(events.c.position > after).order_by(events.c.position).limit(PAGE)
    ).all():
        for row in page:
            yield dict(row._mapping)
        after = page[-1].position


def check(export: LogExport) -> None:
    """Every event against its seal and link, the origin against its seal; `LogCopyInvalid` names
    the first that does not match."""
    key, origin = export.key, export.origin
    if key.key_id != origin.key_id or key.origin_seal(
        origin.key_id, origin.chained_after, origin.chained_at
    ) != bytes(origin.seal):
        raise LogCopyInvalid(
            "the log's record of where its chain begins does not match its key",
            position=0,
            stream_id=None,
            type=None,
            problem="origin",
        )
    previous, last = GENESIS, 0
    for row in export.rows:
        position = int(row["position"])
        seal, chain = row["seal"], row["chain"]
        problem = ""
        if position <= last:
            problem = "is out of order"
        elif seal is None or chain is None:
            problem = "has no seal"
        elif key.seal(content(row), position) != bytes(seal):
            problem = "does not match its seal"
        elif key.link(previous, bytes(seal)) != bytes(chain):
            problem = "does not follow the event before it"
        if problem:
            raise LogCopyInvalid(
                f"the event at position {position} (stream {row['stream_id']}, {row['type']}) {problem}",
                position=position,
                stream_id=str(row["stream_id"]),
                type=str(row["type"]),
                problem="content",
            )
        previous, last = bytes(chain), position


def parse(document: bytes) -> Parsed:
    """The export in `document` (the bytes `to_bytes` gave), checked against its chain."""
    lines = document.decode("utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("it is not a copy of a Capsule event log")
        if header.get("version") != VERSION:
            raise ValueError(f"it is of version {header.get('version')}, which this Capsule does not read")
        o = header["origin"]
        origin = Origin(
            str(o["key_id"]),
            int(o["chained_after"]),
            datetime.fromisoformat(o["chained_at"]),
            bytes.fromhex(o["seal"]),
        )
        key = ChainKey(bytes.fromhex(header["chain_key"]))
        rows = [_row(json.loads(line)) for line in lines[1:]]
        if len(rows) != header["events"]:
            raise ValueError(f"it holds {len(rows)} events, its header says {header['events']}")
        export = LogExport(key, origin, rows)
        if (export.head_position, export.head) != (header["head_position"], header["head"]):
            raise ValueError("its last event is not the one its header names")
        written_at = datetime.fromisoformat(header["written_at"])
        repository = str(header["repository"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise LogCopyInvalid(
            f"the copy is malformed: {e}", position=0, stream_id=None, type=None, problem="content"
        ) from e
    check(export)
    return Parsed(export, repository, written_at)


def _row(item: Any) -> dict[str, Any]:
    position, stream_id, version, type_, schema_version, data, metadata, recorded_at, seal, chain = item
    if not isinstance(data, dict) or not isinstance(metadata, dict):
        raise ValueError(f"the event at position {position} has no JSON object for its data or metadata")
    return {
        "position": int(position),
        "stream_id": str(stream_id),
        "version": int(version),
        "type": str(type_),
        "schema_version": int(schema_version),
        "data": data,
        "metadata": metadata,
        "recorded_at": datetime.fromisoformat(recorded_at),
        "seal": bytes.fromhex(seal),
        "chain": bytes.fromhex(chain),
    }


def import_log(conn: Connection, export: LogExport) -> None:
    """Write `export` into the empty log of `conn` (its schema made without a chain key), positions,
    seals and origin as they were."""
    columns = (
        "position",
        "stream_id",
        "version",
        "type",
        "schema_version",
        "data",
        "metadata",
        "recorded_at",
    )
    for start in range(0, len(export.rows), INSERT_BATCH):
        batch = export.rows[start : start + INSERT_BATCH]
        conn.execute(insert(events), [{c: r[c] for c in columns} for r in batch])
        conn.execute(
            insert(event_chain),
            [{"position": r["position"], "seal": r["seal"], "chain": r["chain"]} for r in batch],
        )
    o = export.origin
    conn.execute(
        insert(event_chain_origin),
        {
            "id": 1,
            "key_id": o.key_id,
            "chained_after": o.chained_after,
            "chained_at": o.chained_at,
            "seal": o.seal,
        },
    )
