"""The chain that makes the event log tamper-evident: each event sealed with a key, linked to the one before.

Every event has a row in `event_chain`, written in its append's own transaction:

    seal  = HMAC-SHA256(key, SEAL_LABEL || content || position as 8 bytes, big-endian)
    chain = HMAC-SHA256(key, LINK_LABEL || chain of the event before || seal)

with 32 zero bytes as the chain before the first event. `content` is the compact JSON array
`[stream_id, version, type, schema_version, data, metadata, recorded_at]`: keys sorted, floats
that are whole numbers written as the integer of their shortest decimal form (PostgreSQL's JSONB
keeps no difference), the time in UTC with microseconds. The position comes last so that a
verifier can try one event at every position for the price of one hash each, to tell a moved
event from a changed one.

The key is 32 random bytes in a file outside the log (`ChainKeyFile`), created with the chain.
The log records only the key's id and one sealed row, `event_chain_origin`, saying where the chain
begins: events written before the log was chained (by a Capsule without the chain) are sealed when
it is chained, so from then on they are covered like the rest. Whoever can write the database
without reading the key file cannot change, remove, reorder or add an event unnoticed; whoever
holds the key can rewrite and chain again, which only a copy of the chain's head kept elsewhere
shows. Removing events from the end of the log leaves a shorter chain that still holds: that too
only the head kept elsewhere shows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select

from capsule.orchestrator.errors import EventLogKeyError, EventLogTampered
from capsule.orchestrator.eventstore.schema import event_chain, event_chain_origin, events
from capsule.orchestrator.private import create_key_file, key_from_text

KEY_BYTES = 32
GENESIS = bytes(32)
SEAL_LABEL = b"capsule event seal v1\x00"
LINK_LABEL = b"capsule event link v1\x00"
ORIGIN_LABEL = b"capsule event chain origin v1\x00"
KEY_ID_LABEL = b"capsule event log key id v1"
KEY_FILE_HEADER = (
    "# Capsule's event log key: it seals every event of the log. Keep it secret, keep a copy with the\n"
    "# repository key, and give it to every machine that appends to the same event log.\n"
)
SEAL_BATCH = 1000
KEY_HINT = "CAPSULE_EVENT_LOG_KEY_FILE"


@dataclass(frozen=True)
class ChainKey:
    """The secret that seals the log; `key_id` names it without revealing it."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:32]

    def sealer(self, content: bytes) -> hmac.HMAC:
        """The seal's hash over everything but the position: copy it and add a position to finish it."""
        return hmac.new(self.secret, SEAL_LABEL + content, hashlib.sha256)

    def seal(self, content: bytes, position: int) -> bytes:
        return finish(self.sealer(content), position)

    def link(self, previous: bytes, seal: bytes) -> bytes:
        return hmac.new(self.secret, LINK_LABEL + previous + seal, hashlib.sha256).digest()

    def origin_seal(self, key_id: str, chained_after: int, chained_at: datetime) -> bytes:
        body = json.dumps([key_id, chained_after, utc_text(chained_at)], separators=(",", ":"))
        return hmac.new(self.secret, ORIGIN_LABEL + body.encode(), hashlib.sha256).digest()


def finish(sealer: hmac.HMAC, position: int) -> bytes:
    done = sealer.copy()
    done.update(position.to_bytes(8, "big"))
    return done.digest()


class ChainKeyFile:
    """The file that holds the chain's key: one line of 64 hex digits under a comment, mode 0600.

    `key()` reads it once and keeps it; `key(create=True)` creates it first when it is missing,
    which only the start of a chain asks for: a log already chained needs the key it was chained with.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._key: ChainKey | None = None

    def __repr__(self) -> str:
        return f"ChainKeyFile({str(self.path)!r})"

    def key(self, *, create: bool = False) -> ChainKey:
        if self._key is None:
            if create and not self.path.exists():
                self._create()
            self._key = self._read()
        return self._key

    def _read(self) -> ChainKey:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError as e:
            raise EventLogKeyError(
                f"the event log is sealed with a key, but its key file {self.path} is missing: copy "
                f"event-log.key there from the machine that first opened this event log, or set {KEY_HINT} "
                "to where it is"
            ) from e
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "it is not text"
            raise EventLogKeyError(
                f"the event log key file {self.path} cannot be read ({reason}); check the file and its "
                f"permissions, or {KEY_HINT}"
            ) from e
        secret = key_from_text(text, KEY_BYTES)
        if secret is None:
            raise EventLogKeyError(
                f"the file {self.path} is not an event log key (one line of {2 * KEY_BYTES} hex digits); "
                f"put the event log's key file there, or set {KEY_HINT} to where it is"
            )
        return ChainKey(secret)

    def _create(self) -> None:
        try:
            create_key_file(self.path, KEY_FILE_HEADER, KEY_BYTES)
        except OSError as e:
            raise EventLogKeyError(
                f"the event log key file {self.path} cannot be created ({e.strerror}); check that its "
                f"folder is writable, or set {KEY_HINT}"
            ) from e


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    # JSONB keeps a number's decimal text, not its float: it reads 2.0 back as 2 and 1e23 as
    # 100000000000000000000000, which as a float would be 99999999999999991611392. A whole float
    # seals as the integer its shortest decimal form names.
    if isinstance(value, float) and value.is_integer():
        return int(Decimal(repr(value)))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def content(row: Mapping[str, Any] | Row[Any]) -> bytes:
    """The bytes an event's seal covers, besides its position: the same for a row written and read back."""
    fields = row if isinstance(row, Mapping) else row._mapping
    body = [
        fields["stream_id"],
        fields["version"],
        fields["type"],
        fields["schema_version"],
        _plain(fields["data"]),
        _plain(fields["metadata"]),
        utc_text(fields["recorded_at"]),
    ]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def lock_appends(conn: Connection) -> None:
    """Hold off every other append until this transaction ends (SQLite's BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        table = conn.dialect.identifier_preparer.format_table(events)
        conn.exec_driver_sql(f"LOCK TABLE {table} IN EXCLUSIVE MODE")


def origin_key_id(conn: Connection) -> str | None:
    """The id of the key the log is chained with; None while the log is not chained."""
    found = conn.execute(select(event_chain_origin.c.key_id)).scalar_one_or_none()
    return None if found is None else str(found)


def start_chain(conn: Connection, key_file: ChainKeyFile, now: datetime) -> None:
    """Chain the log if it is not chained yet: seal the events it holds and record where the chain begins.

    Runs in the caller's transaction, after taking the append lock; rows of `events` are only read.
    A log whose origin row is gone while its events are sealed is not chained again: that would
    cover whatever was done to it.
    """
    if origin_key_id(conn) is not None:
        return
    lock_appends(conn)
    if origin_key_id(conn) is not None:
        return
    sealed = conn.execute(select(func.count()).select_from(event_chain)).scalar_one()
    if sealed:
        raise EventLogTampered(
            f"the event log has lost the record of where its chain begins (table {event_chain_origin.name}) "
            f"though {sealed} events are sealed: the database was changed around Capsule; keep a copy of "
            "it as evidence and restore the event log from a copy",
            position=0,
            stream_id=None,
            type=None,
            problem="origin",
        )
    key = key_file.key(create=True)
    previous, last = GENESIS, 0
    for page in _event_pages(conn):
        rows = []
        for row in page:
            seal = key.seal(content(row), row.position)
            previous = key.link(previous, seal)
            rows.append({"position": row.position, "seal": seal, "chain": previous})
            last = row.position
        conn.execute(insert(event_chain), rows)
    conn.execute(
        insert(event_chain_origin),
        {
            "id": 1,
            "key_id": key.key_id,
            "chained_after": last,
            "chained_at": now,
            "seal": key.origin_seal(key.key_id, last, now),
        },
    )


def _event_pages(conn: Connection) -> Iterator[Sequence[Row[Any]]]:
    after = 0
    while page := conn.execute(
        select(events).where(events.c.position > after).order_by(events.c.position).limit(SEAL_BATCH)
    ).all():
        yield page
        after = page[-1].position


# Prebuilt, so that SQLAlchemy compiles them once: an append pays one query and one insert for its seals.
_HEAD = select(
    select(event_chain_origin.c.key_id).scalar_subquery().label("key_id"),
    select(event_chain.c.chain)
    .order_by(event_chain.c.position.desc())
    .limit(1)
    .scalar_subquery()
    .label("chain"),
)
_INSERT_SEALS = insert(event_chain)


@dataclass(frozen=True)
class Sealing:
    """What an append seals its events with: the log's key and the chain of the last event before them."""

    key: ChainKey
    previous: bytes

    def write(self, conn: Connection, appended: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        """Write the seals of events just inserted, given as (position, row) in position order."""
        previous = self.previous
        rows = []
        for position, row in appended:
            seal = self.key.seal(content(row), position)
            previous = self.key.link(previous, seal)
            rows.append({"position": position, "seal": seal, "chain": previous})
        conn.execute(_INSERT_SEALS, rows)


def sealing_for_append(conn: Connection, key_file: ChainKeyFile | None, now: datetime) -> Sealing | None:
    """How to seal an append, after checking the key is the log's; None for a log that is not chained.

    Call it under the append lock. A store given a key chains a log that is not chained yet; a
    store without one may only append to such a log (as the Capsules before the chain did).
    """
    head = conn.execute(_HEAD).one()
    chained_with = head.key_id
    if key_file is None:
        if chained_with is not None:
            raise EventLogKeyError(
                "this event log is chained: appending to it needs its key file (event-log.key under "
                f"CAPSULE_HOME, or {KEY_HINT})"
            )
        return None
    if chained_with is None:
        start_chain(conn, key_file, now)
        head = conn.execute(_HEAD).one()
        return Sealing(key_file.key(), bytes(head.chain or GENESIS))
    return Sealing(check_key(key_file, chained_with), bytes(head.chain or GENESIS))


def check_key(key_file: ChainKeyFile, chained_with: str) -> ChainKey:
    """The key in `key_file`, if it is the one with id `chained_with`; `EventLogKeyError` otherwise."""
    key = key_file.key()
    if key.key_id != chained_with:
        raise EventLogKeyError(
            f"the key in {key_file.path} is not the key this event log is chained with (key id "
            f"{chained_with}, the file holds {key.key_id}): put the event log's own key file there, or "
            f"set {KEY_HINT} to where it is"
        )
    return key
