"""Checking the event log against its chain: every event sealed, in its place, none missing between.

`verify_chain` reads the log and its chain in one snapshot and stops at the first event that does
not match, naming it and what is wrong, as far as the seals tell: a changed content, an event moved
to another position, a removed event, or one added without the key. It never writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, func, select

from capsule.orchestrator.db import database_errors, for_reading
from capsule.orchestrator.errors import EventLogKeyError, EventLogTampered
from capsule.orchestrator.eventstore.chain import GENESIS, ChainKey, ChainKeyFile, content, finish, utc_text
from capsule.orchestrator.eventstore.schema import event_chain, event_chain_origin, events

PAGE = 5000


@dataclass(frozen=True)
class ChainReport:
    """What a successful check covered: how many events, up to which head, since when the log is chained."""

    events: int
    head_position: int
    head: str
    """The chain of the last event, in hex: kept elsewhere, it shows later that no event was removed
    from the end or rewritten with the key."""
    chained_after: int
    """The last position written before the log was chained; those events are sealed since `chained_at`."""
    chained_at: datetime
    key_id: str


def verify_chain(engine: Engine, chain_key: ChainKeyFile) -> ChainReport:
    """Check every event against its seal and its link; raise `EventLogTampered` at the first miss."""
    with database_errors(engine), _snapshot(engine) as conn:
        return _Verifier(conn, chain_key).run()


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    # One snapshot for the whole check: an append committing meanwhile must not show its event
    # without its seal, or the other way round. SQLite's read transaction is one snapshot already.
    with for_reading(engine).connect() as opened:
        conn = opened
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _pages(conn: Connection, table: Table) -> Iterator[Row[Any]]:
    after = 0
    while page := conn.execute(
        select(table).where(table.c.position > after).order_by(table.c.position).limit(PAGE)
    ).all():
        yield from page
        after = page[-1].position


def _named(row: Row[Any]) -> str:
    return f"the event at position {row.position} (stream {row.stream_id}, {row.type})"


class _Verifier:
    def __init__(self, conn: Connection, chain_key: ChainKeyFile) -> None:
        self._conn = conn
        self._chain_key = chain_key
        self._chained_after = 0
        self._chained_at: datetime | None = None

    def run(self) -> ChainReport:
        origin = self._conn.execute(select(event_chain_origin)).first()
        if origin is None:
            self._unchained()
        assert origin is not None
        key = self._chain_key.key()
        if key.key_id != origin.key_id:
            raise EventLogKeyError(
                f"the key in {self._chain_key.path} is not the key this event log is chained with (key id "
                f"{origin.key_id}, the file holds {key.key_id}), so its seals cannot be checked: use the "
                "event log's own key file"
            )
        if key.origin_seal(origin.key_id, origin.chained_after, origin.chained_at) != bytes(origin.seal):
            raise EventLogTampered(
                "the event log's record of where its chain begins was changed: the database was changed "
                "around Capsule; keep a copy of it as evidence",
                position=0,
                stream_id=None,
                type=None,
                problem="origin",
            )
        self._chained_after, self._chained_at = origin.chained_after, origin.chained_at
        return self._walk(key, origin.key_id)

    def _unchained(self) -> None:
        count = self._conn.execute(select(func.count()).select_from(events)).scalar_one()
        sealed = self._conn.execute(select(func.count()).select_from(event_chain)).scalar_one()
        if sealed:
            raise EventLogTampered(
                f"the event log has lost the record of where its chain begins, though {sealed} events are "
                "sealed: the database was changed around Capsule; keep a copy of it as evidence",
                position=0,
                stream_id=None,
                type=None,
                problem="origin",
            )
        raise EventLogKeyError(
            f"the event log ({count} events) is not chained yet, so there is nothing to check it against: "
            "open it once with its key (any capsule command does) and check again"
        )

    def _walk(self, key: ChainKey, key_id: str) -> ChainReport:
        logged, sealed = _pages(self._conn, events), _pages(self._conn, event_chain)
        event, seal = next(logged, None), next(sealed, None)
        previous, count, head_position = GENESIS, 0, 0
        while event is not None or seal is not None:
            if seal is None or (event is not None and event.position < seal.position):
                assert event is not None
                raise self._tampered(
                    event, "forged", "has no seal: it was added to the log without the log's key"
                )
            if event is None or seal.position < event.position:
                raise EventLogTampered(
                    f"the event log does not match its chain: the event at position {seal.position} was "
                    "removed (its seal is still there); keep a copy of the log as evidence",
                    position=seal.position,
                    stream_id=None,
                    type=None,
                    problem="removed",
                )
            stored_seal, stored_chain = bytes(seal.seal), bytes(seal.chain)
            sealer = key.sealer(content(event))
            if finish(sealer, event.position) != stored_seal:
                raise self._changed(key, event, sealer, stored_seal)
            if key.link(previous, stored_seal) != stored_chain:
                raise self._unlinked(key, event, stored_seal, stored_chain)
            previous, count, head_position = stored_chain, count + 1, event.position
            event, seal = next(logged, None), next(sealed, None)
        assert self._chained_at is not None
        return ChainReport(
            events=count,
            head_position=head_position,
            head=previous.hex() if count else "",
            chained_after=self._chained_after,
            chained_at=self._chained_at,
            key_id=key_id,
        )

    def _changed(self, key: ChainKey, event: Row[Any], sealer: Any, stored_seal: bytes) -> EventLogTampered:
        # Moved rather than changed: its content seals at another position, as recorded there or here.
        for other in _pages(self._conn, event_chain):
            at = finish(sealer, other.position)
            if other.position != event.position and at in (bytes(other.seal), stored_seal):
                return self._tampered(
                    event, "order", f"was recorded at position {other.position}: events were reordered"
                )
        return self._tampered(
            event,
            "content",
            "is not what was recorded there: its stream, version, type, data, metadata (the actor among "
            "them) or time was changed, or it was forged without the key",
        )

    def _unlinked(
        self, key: ChainKey, event: Row[Any], stored_seal: bytes, stored_chain: bytes
    ) -> EventLogTampered:
        for other in _pages(self._conn, event_chain):
            if other.position != event.position and key.link(bytes(other.chain), stored_seal) == stored_chain:
                return self._tampered(
                    event,
                    "order",
                    f"was recorded right after the event now at position {other.position}: events were "
                    "reordered",
                )
        return self._tampered(
            event,
            "gap",
            "does not follow the event before it: the event recorded just before it was removed, "
            "with its seal",
        )

    def _tampered(self, event: Row[Any], problem: str, what: str) -> EventLogTampered:
        when = ""
        if event.position <= self._chained_after and self._chained_at is not None:
            when = (
                f" (it was written before the log was chained on {utc_text(self._chained_at)[:19]} UTC, "
                "and changed since)"
            )
        return EventLogTampered(
            f"the event log does not match its chain: {_named(event)} {what}{when}; events from there on "
            "cannot be trusted: keep a copy of the log as evidence",
            position=event.position,
            stream_id=event.stream_id,
            type=event.type,
            problem=problem,
        )
