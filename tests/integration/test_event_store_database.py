"""The database under the event store: SQLite settings, URLs, and errors a person can act on."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from capsule.orchestrator.db import default_event_store_url, for_reading, make_engine
from capsule.orchestrator.errors import EventStoreError, EventStoreUnavailable
from capsule.orchestrator.eventstore import EventStore, Metadata, NewEvent, create_schema

META = Metadata(actor="user:ana", correlation_id="req-1")
EVENT = NewEvent("BackupRequested", 1, {"kind": "database"})


@pytest.fixture
def sqlite_engine(tmp_path: Path):
    engine = make_engine(default_event_store_url(tmp_path / "home" / "capsule"))
    create_schema(engine)
    yield engine
    engine.dispose()


def test_default_url_is_a_sqlite_file_in_capsule_home(tmp_path: Path):
    assert default_event_store_url(tmp_path / "capsule") == f"sqlite:///{tmp_path}/capsule/events.db"


def test_sqlite_event_store_is_durable_wal_with_its_folder_created(tmp_path: Path, sqlite_engine: Engine):
    path = tmp_path / "home" / "capsule" / "events.db"
    assert path.is_file()
    with sqlite_engine.connect() as conn:
        pragmas = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30_000}
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        table_sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    finally:
        raw.close()
    # A reused rowid would hide an event from a follower that already passed that position.
    assert "AUTOINCREMENT" in table_sql


def test_sqlite_readers_and_writers_do_not_wait_for_each_other(sqlite_engine: Engine):
    store = EventStore(sqlite_engine)
    store.append("job-1", 0, [EVENT], META)

    with for_reading(sqlite_engine).connect() as reader:
        assert reader.execute(text("SELECT count(*) FROM events")).scalar() == 1
        started = time.monotonic()
        store.append("job-1", 1, [EVENT], META)
        assert time.monotonic() - started < 5
        # The reader keeps the snapshot it started with.
        assert reader.execute(text("SELECT count(*) FROM events")).scalar() == 1

    read_took: list[float] = []
    with store.transaction() as conn:
        store.append("job-1", 2, [EVENT], META, conn=conn)

        def read() -> None:
            started = time.monotonic()
            assert store.stream_version("job-1") == 2
            read_took.append(time.monotonic() - started)

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert read_took and read_took[0] < 5
    assert store.stream_version("job-1") == 3


def test_a_missing_events_table_is_reported_as_such(event_store_url: str):
    engine = make_engine(event_store_url)
    try:
        with pytest.raises(EventStoreError, match="has no events table"):
            EventStore(engine).read_all()
    finally:
        engine.dispose()


def test_payloads_are_jsonb_on_postgresql_and_json_text_on_sqlite(event_store_engine: Engine):
    store = EventStore(event_store_engine)
    store.append("job-1", 0, [NewEvent("BackupRequested", 1, {"kind": "database", "tags": ["a"]})], META)
    with event_store_engine.connect() as conn:
        if event_store_engine.dialect.name == "postgresql":
            types = dict(
                conn.execute(
                    text(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = 'events' AND table_schema = current_schema()"
                    )
                ).all()
            )
            assert (types["data"], types["metadata"]) == ("jsonb", "jsonb")
            # Inside a payload, as the JSONB column makes possible.
            kind = conn.execute(text("SELECT data->>'kind' FROM events")).scalar_one()
        else:
            kind = conn.execute(text("SELECT json_extract(data, '$.kind') FROM events")).scalar_one()
    assert kind == "database"
    [stored] = store.read_stream("job-1")
    assert stored.data == {"kind": "database", "tags": ["a"]}


def test_unreachable_server_is_reported_with_the_url_but_never_its_password():
    engine = make_engine("postgresql+psycopg://capsule:s3cret-pw@127.0.0.1:1/capsule?connect_timeout=2")
    try:
        with pytest.raises(EventStoreUnavailable) as caught:
            EventStore(engine).append("job-1", 0, [EVENT], META)
    finally:
        engine.dispose()
    message = str(caught.value)
    assert "cannot be reached" in message
    assert "postgresql+psycopg://capsule:***@127.0.0.1:1/capsule" in message
    assert "CAPSULE_EVENT_STORE_URL" in message
    assert "s3cret-pw" not in message


def test_plain_postgresql_url_uses_psycopg():
    engine = make_engine("postgresql://capsule@127.0.0.1:1/capsule")
    assert engine.url.drivername == "postgresql+psycopg"
    engine.dispose()


@pytest.mark.parametrize(
    "url", ["mysql://capsule:s3cret-pw@db/capsule", "postgresql+psycopg2://capsule:s3cret-pw@db/capsule"]
)
def test_a_database_capsule_cannot_use_is_refused_without_showing_the_password(url: str):
    with pytest.raises(EventStoreError, match="CAPSULE_EVENT_STORE_URL") as caught:
        make_engine(url)
    assert "s3cret-pw" not in str(caught.value)


def test_a_url_that_is_no_url_is_refused_without_repeating_it():
    with pytest.raises(EventStoreError, match="not a database URL") as caught:
        make_engine("capsule:s3cret-pw@db")
    assert "s3cret-pw" not in str(caught.value)


def test_a_folder_that_cannot_be_created_is_reported(tmp_path: Path):
    (tmp_path / "home").write_text("a file where the folder should be")

    with pytest.raises(EventStoreUnavailable, match="cannot be created"):
        make_engine(default_event_store_url(tmp_path / "home" / "capsule"))
