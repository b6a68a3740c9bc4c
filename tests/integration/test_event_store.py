"""The event store on real databases: every test runs on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError

from capsule.domain import restore_job
from capsule.domain.events import RestoreRequested
from capsule.orchestrator import codec
from capsule.orchestrator.db import make_engine
from capsule.orchestrator.errors import ConcurrencyConflict, OrchestratorError, UnknownSchemaVersion
from capsule.orchestrator.eventstore import (
    EventStore,
    Metadata,
    NewEvent,
    StoredEvent,
    Upcasters,
    create_schema,
)
from capsule.orchestrator.eventstore.schema import JSONDocument, UTCDateTime

META = Metadata(actor="user:ana", correlation_id="req-1")


def requested(n: int = 1) -> NewEvent:
    return NewEvent("BackupRequested", 1, {"kind": "database", "n": n})


def renamed_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"name": data["title"], "note": "upcast"}


@pytest.fixture
def store(event_store_engine: Engine) -> EventStore:
    return EventStore(event_store_engine)


def insert_raw(
    engine: Engine, stream_id: str, version: int, *, type_: str, schema_version: int, data: dict
) -> None:
    """Write a row the way an older Capsule, or any other program, would: plain SQL."""
    statement = text(
        "INSERT INTO events (stream_id, version, type, schema_version, data, metadata, recorded_at) "
        "VALUES (:stream_id, :version, :type, :schema_version, :data, :metadata, :recorded_at)"
    ).bindparams(
        bindparam("data", type_=JSONDocument),
        bindparam("metadata", type_=JSONDocument),
        bindparam("recorded_at", type_=UTCDateTime()),
    )
    with engine.begin() as conn:
        conn.execute(
            statement,
            {
                "stream_id": stream_id,
                "version": version,
                "type": type_,
                "schema_version": schema_version,
                "data": data,
                "metadata": META.as_dict(),
                "recorded_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            },
        )


def test_appends_and_reads_back_events_with_metadata_and_utc_time(event_store_engine: Engine):
    local = timezone(timedelta(hours=2))
    store = EventStore(event_store_engine, clock=lambda: datetime(2026, 11, 5, 14, 30, 1, 250, tzinfo=local))
    meta = Metadata(actor="token:ci", correlation_id="req-7", causation_id="msg-3")

    appended = store.append("job-1", 0, [requested(1), NewEvent("SnapshotTaken", 1, {"bytes": 42})], meta)

    read = store.read_stream("job-1")
    assert read == appended
    assert [(e.version, e.type, e.schema_version, e.data) for e in read] == [
        (1, "BackupRequested", 1, {"kind": "database", "n": 1}),
        (2, "SnapshotTaken", 1, {"bytes": 42}),
    ]
    assert all(e.metadata == meta and e.stream_id == "job-1" for e in read)
    assert read[0].recorded_at == datetime(2026, 11, 5, 12, 30, 1, 250, tzinfo=UTC)
    assert read[0].recorded_at.utcoffset() == timedelta(0)


def test_counts_versions_per_stream(store: EventStore):
    assert store.stream_version("job-a") == 0
    assert store.read_stream("job-a") == []

    store.append("job-a", 0, [requested(1), requested(2)], META)
    store.append("job-b", 0, [requested(1)], META)
    store.append("job-a", 2, [requested(3)], META)

    assert store.stream_version("job-a") == 3
    assert store.stream_version("job-b") == 1
    assert [e.version for e in store.read_stream("job-a")] == [1, 2, 3]
    assert [e.data["n"] for e in store.read_stream("job-a", after_version=1)] == [2, 3]


def test_global_positions_strictly_increase_across_streams(store: EventStore):
    assert store.last_position() == 0
    for i in range(5):
        store.append(f"job-{i % 2}", i // 2, [requested(i)], META)

    everything = store.read_all()
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions))
    assert [e.data["n"] for e in everything] == [0, 1, 2, 3, 4]
    assert store.last_position() == positions[-1]

    pages, after = [], 0
    while page := store.read_all(after_position=after, limit=2):
        pages.append([e.position for e in page])
        after = page[-1].position
    assert pages == [positions[0:2], positions[2:4], positions[4:5]]


def test_stale_expected_version_raises_conflict_and_appends_nothing(store: EventStore):
    store.append("job-1", 0, [requested(1)], META)

    with pytest.raises(ConcurrencyConflict) as caught:
        store.append("job-1", 0, [requested(2)], META)

    assert caught.value.stream_id == "job-1"
    assert (caught.value.expected_version, caught.value.actual_version) == (0, 1)
    assert "load the stream again" in str(caught.value)
    assert isinstance(caught.value, OrchestratorError)
    assert [e.data["n"] for e in store.read_stream("job-1")] == [1]


def test_of_two_appenders_racing_on_one_stream_exactly_one_wins(
    event_store_url: str, event_store_engine: Engine
):
    start = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def append(i: int) -> None:
        engine = make_engine(event_store_url)
        try:
            mine = EventStore(engine)
            start.wait()
            # Holding the transaction open makes the other appender wait inside its own.
            outcomes[i] = mine.append(
                "job-1", 0, [requested(i)], META, handlers=[lambda conn, stored: time.sleep(0.2)]
            )
        except ConcurrencyConflict as e:
            outcomes[i] = e
        finally:
            engine.dispose()

    threads = [threading.Thread(target=append, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [o for o in outcomes if isinstance(o, list)]
    losers = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
    assert (len(winners), len(losers)) == (1, 1), outcomes
    assert EventStore(event_store_engine).read_stream("job-1") == winners[0]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET type = 'Forged'", "DELETE FROM events", "DELETE FROM events WHERE version = 1"],
)
def test_database_refuses_to_change_or_remove_events(store: EventStore, statement: str):
    appended = store.append("job-1", 0, [requested(1)], META)

    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql(statement)

    assert store.read_all() == appended


@pytest.mark.parametrize("event_store_url", ["postgresql"], indirect=True)
def test_postgresql_refuses_to_truncate_events(store: EventStore):
    appended = store.append("job-1", 0, [requested(1)], META)

    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE events")

    assert store.read_all() == appended


def test_handlers_run_in_the_append_transaction(store: EventStore):
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE job_list (stream_id TEXT PRIMARY KEY, events INTEGER)")

    def project(conn: Connection, stored: list[StoredEvent]) -> None:
        conn.execute(
            text("INSERT INTO job_list (stream_id, events) VALUES (:s, :n)"),
            {"s": stored[0].stream_id, "n": len(stored)},
        )

    store.append("job-1", 0, [requested(1), requested(2)], META, handlers=[project])

    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT stream_id, events FROM job_list")).all() == [("job-1", 2)]


def test_a_handler_that_raises_rolls_the_append_back(store: EventStore):
    seen: list[list[StoredEvent]] = []

    def record(conn: Connection, stored: list[StoredEvent]) -> None:
        seen.append(stored)

    def fail(conn: Connection, stored: list[StoredEvent]) -> None:
        raise RuntimeError("projection broke")

    with pytest.raises(RuntimeError, match="projection broke"):
        store.append("job-1", 0, [requested(1)], META, handlers=[record, fail])

    assert [e.version for e in seen[0]] == [1]
    assert store.read_all() == []
    assert store.stream_version("job-1") == 0
    assert store.append("job-1", 0, [requested(2)], META)[0].version == 1


def test_old_event_is_read_back_upcast_while_its_row_keeps_version_1(event_store_engine: Engine):
    insert_raw(
        event_store_engine,
        "product-1",
        1,
        type_="ProductRenamed",
        schema_version=1,
        data={"title": "Espresso"},
    )
    upcasters = Upcasters()
    upcasters.register("ProductRenamed", 1, renamed_to_v2)
    store = EventStore(event_store_engine, upcasters=upcasters)

    for read in (store.read_stream("product-1"), store.read_all()):
        assert [(e.schema_version, e.data) for e in read] == [(2, {"name": "Espresso", "note": "upcast"})]
    with event_store_engine.connect() as conn:
        row = conn.execute(text("SELECT schema_version, data FROM events")).one()
    assert row.schema_version == 1
    assert row.data in ({"title": "Espresso"}, '{"title": "Espresso"}')


def test_a_restore_requested_before_include_existed_reads_back_restoring_everything(
    event_store_engine: Engine,
):
    # As Capsule wrote it before `--include`: schema version 1, no `include` in the payload.
    v1 = {"job_id": "r1", "snapshot_id": "abc", "target": "/srv/out", "force": False, "check": False}
    insert_raw(
        event_store_engine,
        "restore-r1",
        1,
        type_="RestoreRequested",
        schema_version=1,
        data={**v1, "plan": ["restore"]},
    )
    store = EventStore(event_store_engine, upcasters=codec.upcasters())

    [stored] = store.read_stream("restore-r1")
    data = stored.data
    assert (
        stored.schema_version,
        data["include"],
        data["from_other_source"],
        data["special_bits"],
        data["source"],
    ) == (4, [], False, False, None)
    event = codec.decode(stored)
    assert isinstance(event, RestoreRequested)
    assert (event.include, event.target, event.plan, event.source) == ((), "/srv/out", ("restore",), None)
    state = restore_job.replay([event])
    assert (state.status, state.include) == ("pending", ())


def test_appends_only_the_newest_schema_version_and_refuses_to_read_a_newer_one(event_store_engine: Engine):
    upcasters = Upcasters()
    upcasters.register("ProductRenamed", 1, renamed_to_v2)
    store = EventStore(event_store_engine, upcasters=upcasters)

    with pytest.raises(UnknownSchemaVersion, match="newest shape"):
        store.append("product-1", 0, [NewEvent("ProductRenamed", 1, {"title": "Tea"})], META)
    store.append("product-1", 0, [NewEvent("ProductRenamed", 2, {"name": "Tea"})], META)
    insert_raw(
        event_store_engine,
        "product-1",
        2,
        type_="ProductRenamed",
        schema_version=3,
        data={"name": "Tea", "lang": "de"},
    )

    with pytest.raises(UnknownSchemaVersion, match="upgrade this one"):
        store.read_stream("product-1")


def test_transaction_reads_and_appends_atomically(store: EventStore):
    store.append("job-1", 0, [requested(1)], META)

    with store.transaction() as conn:
        version = store.stream_version("job-1", conn=conn)
        store.append("job-1", version, [requested(2)], META, conn=conn)
        assert [e.version for e in store.read_stream("job-1", conn=conn)] == [1, 2]
    assert store.stream_version("job-1") == 2

    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.append("job-1", 2, [requested(3)], META, conn=conn)
        raise RuntimeError("the command failed after appending")
    assert store.stream_version("job-1") == 2


def test_a_failed_append_leaves_nothing_in_the_callers_transaction(store: EventStore):
    def fail(conn: Connection, stored: list[StoredEvent]) -> None:
        raise RuntimeError("projection broke")

    with store.transaction() as conn:
        with pytest.raises(RuntimeError):
            store.append("job-1", 0, [requested(1)], META, handlers=[fail], conn=conn)
        store.append("job-2", 0, [requested(2)], META, conn=conn)

    assert [(e.stream_id, e.version) for e in store.read_all()] == [("job-2", 1)]


def test_refuses_data_json_cannot_hold(store: EventStore):
    with pytest.raises(ValueError, match="JSON"):
        store.append("job-1", 0, [NewEvent("BackupRequested", 1, {"at": datetime.now(UTC)})], META)
    with pytest.raises(ValueError, match="JSON"):
        store.append("job-1", 0, [NewEvent("BackupRequested", 1, {"ratio": float("nan")})], META)
    assert store.read_all() == []


def test_creating_the_schema_twice_is_harmless(store: EventStore):
    store.append("job-1", 0, [requested(1)], META)

    create_schema(store.engine)
    create_schema(store.engine)

    assert len(store.read_all()) == 1
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM events")
