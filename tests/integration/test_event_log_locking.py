"""Two writers of one SQLite event log: one waits for the other instead of failing, and a wait
that ends without the lock says how long it lasted.

Every test holds the lock with a second real connection to a real file, as another Capsule process
would hold it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule.orchestrator import db
from capsule.orchestrator.db import make_engine
from capsule.orchestrator.errors import EventStoreUnavailable
from capsule.orchestrator.eventstore import EventStore, Metadata, NewEvent, create_schema

GIVE_UP_AT_ONCE = 1.0
"""Seconds an open that fails without waiting has long ended within, however busy the machine."""


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "capsule" / "events.db"


@pytest.fixture
def holder(log: Path) -> Iterator[sqlite3.Connection]:
    log.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(log, isolation_level=None)
    yield conn
    conn.close()


def test_a_log_another_process_is_creating_is_waited_for_not_reported_locked(
    log: Path, holder: sqlite3.Connection
) -> None:
    # The first process to open a new log switches it to WAL mode: until then the file is in
    # SQLite's rollback mode, and the switch holds its write lock. A second process opening the log
    # then got "database is locked" at once, without the busy timeout: two backups started together
    # on a new Capsule home, and one failed.
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE first_writer (x)")
    outcome: dict[str, object] = {}

    def open_log() -> None:
        engine = make_engine(f"sqlite:///{log}")
        try:
            with engine.connect() as conn:
                outcome["mode"] = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        except Exception as e:
            outcome["error"] = e
        finally:
            engine.dispose()

    opener = threading.Thread(target=open_log)
    opener.start()
    opener.join(GIVE_UP_AT_ONCE)
    still_waiting = opener.is_alive()
    holder.execute("COMMIT")
    opener.join(60)

    assert still_waiting, f"the second opener did not wait for the first: {outcome}"
    assert outcome == {"mode": "wal"}
    assert holder.execute("SELECT name FROM sqlite_master WHERE name = 'first_writer'").fetchone()


def test_a_writer_that_gives_up_says_how_long_it_waited(
    log: Path, holder: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real wait is 30 s; a shorter one keeps the test short and shows the figure is measured.
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_SECONDS", 1)
    engine = make_engine(f"sqlite:///{log}")
    create_schema(engine)
    store = EventStore(engine)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()

    with pytest.raises(EventStoreUnavailable) as raised:
        store.append("job-1", 0, [NewEvent("Noted", 1, {})], Metadata(actor="test", correlation_id="job-1"))
    elapsed = time.monotonic() - started
    holder.execute("ROLLBACK")
    engine.dispose()

    message = str(raised.value)
    assert "locked by another writer" in message and "database is locked" in message
    waited = re.search(r"for (\d+\.\d) s", message)
    assert waited is not None, message
    assert 1.0 <= float(waited.group(1)) <= elapsed + 0.05, message
