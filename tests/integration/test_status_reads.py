"""`capsule status` reads the default SQLite event log with `sqlite3` alone: the same rows, times
and events as the projections' queries and the event store give through SQLAlchemy, and the same
status; any log that opening through the event store would change is left to the event store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capsule.domain import prune_job
from capsule.domain.errors import Category
from capsule.domain.events import DestinationObjectsUploaded, DestinationUploadFailed
from capsule.orchestrator import reads
from capsule.orchestrator.destinations import load
from capsule.orchestrator.eventstore import EventStore
from capsule.orchestrator.eventstore.schema import SQLITE_GUARDS, metadata_obj
from capsule.orchestrator.projections import tables
from capsule.orchestrator.reads import EngineReads, SQLiteReads, open_sqlite_reads
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases import jobs
from capsule.orchestrator.usecases.destinations import add_folder
from capsule.orchestrator.usecases.settings import ChangeSetting, change
from tests.integration.alerting import _run, backup, drill

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def busy_log(settings: Settings, runtime: Runtime) -> Runtime:
    """Backups of both kinds (one failed), a drill, a changed setting and a prune."""
    change(settings, ChangeSetting("timezone", "Europe/Paris"))
    backup(runtime, "database", NOW - timedelta(hours=3))
    backup(runtime, "database", NOW - timedelta(minutes=20), error="the disk is full")
    backup(runtime, "files", NOW - timedelta(days=2))
    drill(runtime, NOW - timedelta(hours=1))
    prune = runtime.request_prune(repack_unused_percent=10, actor="person:test")
    results: dict[str, dict[str, object]] = {step: {} for step in prune_job.PLAN}
    results[prune_job.PLAN_STEP] = {"bytes_before": 9000, "unused_bytes": 4096, "bytes_to_free": 1024}
    results[prune_job.REPACK] = {"packs_repacked": 1, "bytes_written": 500}
    results[prune_job.DELETE] = {"packs_deleted": 2, "bytes_deleted": 1524, "bytes_after": 7476}
    _run(runtime, "prune", prune, results, at=NOW - timedelta(minutes=5))
    return runtime


def quick(settings: Settings) -> SQLiteReads:
    found = open_sqlite_reads(settings)
    assert found is not None
    return found


def test_the_columns_read_are_those_of_the_tables() -> None:
    assert {name: tuple(c.name for c in t.columns) for name, t in metadata_obj.tables.items()} == reads.TABLES
    assert tuple(t.name for t in tables.PROJECTIONS) == reads.PROJECTIONS
    assert {s.split()[5] for s in SQLITE_GUARDS} == set(reads.GUARDS)


def test_every_question_gets_the_answer_the_event_store_gives(settings: Settings, busy_log: Runtime) -> None:
    engine, fast = EngineReads(busy_log.engine, busy_log.store), quick(settings)
    try:
        for status in (None, "completed", "failed"):
            for job_type in (None, "backup", "drill", "prune"):
                assert fast.list_jobs(50, status, job_type) == engine.list_jobs(50, status, job_type)
        assert len(fast.list_jobs()) == 5
        for kind in (None, "database", "files"):
            assert fast.list_snapshots(10, kind) == engine.list_snapshots(10, kind)
        assert fast.list_snapshots(1)[0]["time"].tzinfo is UTC
        assert fast.proven_snapshots() == engine.proven_snapshots() != {}
        assert fast.settings_row() == engine.settings_row() is not None
        assert fast.last_position() == engine.last_position() > 0
        assert fast.first_recorded_at() == engine.first_recorded_at() is not None
        prune_id = engine.list_jobs(1, job_type="prune")[0]["job_id"]
        stream = prune_job.stream_id(prune_id)
        assert [(e.type, e.data, e.recorded_at) for e in fast.read_stream(stream)] == [
            (e.type, e.data, e.recorded_at) for e in engine.read_stream(stream)
        ]
    finally:
        fast.close()


def test_the_status_is_the_same_read_either_way(
    settings: Settings, busy_log: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = jobs.current_status(settings, NOW).as_dict()
    monkeypatch.setattr(reads, "open_sqlite_reads", lambda _settings: None)
    slow = jobs.current_status(settings, NOW).as_dict()
    assert fast == slow
    assert fast["space"]["unused_bytes"] == 4096 and fast["problems"]


def test_a_log_the_event_store_would_change_is_left_to_it(settings: Settings, runtime: Runtime) -> None:
    """Each of these the event store's opening creates, chains or rebuilds: reading around it would
    show what it is about to change."""
    path = settings.home / "events.db"
    assert open_sqlite_reads(settings) is not None
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER events_refuse_delete")
    assert open_sqlite_reads(settings) is None
    Runtime(settings).close()
    assert open_sqlite_reads(settings) is not None
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE jobs ADD COLUMN extra TEXT")
    assert open_sqlite_reads(settings) is None


def test_no_log_yet_and_another_event_store_are_left_to_the_event_store(tmp_path: Path) -> None:
    fresh = Settings(home=tmp_path / "empty")
    assert open_sqlite_reads(fresh) is None
    assert not (tmp_path / "empty").exists()  # nothing made by looking
    elsewhere = Settings(home=tmp_path, event_store_url=f"sqlite:///{tmp_path / 'other.db'}")
    assert open_sqlite_reads(elsewhere) is None


def test_an_event_newer_than_this_capsule_is_left_to_the_event_store(
    settings: Settings, busy_log: Runtime
) -> None:
    fast = quick(settings)
    try:
        fast.conn.execute("DROP TRIGGER events_refuse_update")
        fast.conn.execute("UPDATE events SET schema_version = 99 WHERE position = 1")
        with pytest.raises(reads.NotReadable, match="newer Capsule"):
            fast.first_recorded_at()
    finally:
        fast.close()


def test_a_long_destination_history_is_read_from_its_end(
    settings: Settings, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A year of hourly copies leaves some 17,000 events in a destination's stream. Whether the copy
    # is behind is in its last few: status reads back from the newest, not the whole stream.
    add_folder(settings, "usb", str(tmp_path / "usb"))
    stream = load(settings).by_name["usb"].stream_id
    uploaded = [
        DestinationObjectsUploaded(job_id=f"j{i}", destination="usb", objects=(), done=i % 2 == 1)
        for i in range(1500)
    ]
    failed = DestinationUploadFailed(
        job_id="late", destination="usb", error="the share is gone", category=Category.NOT_FOUND
    )
    for start in range(0, len(uploaded), 500):
        runtime.append_to(
            stream, list(uploaded[start : start + 500]), actor="system:upload", correlation_id="t"
        )
    runtime.append_to(stream, [failed], actor="system:upload", correlation_id="t")
    runtime.append_to(stream, uploaded[:40:2], actor="system:upload", correlation_id="t")  # none done

    decoded: list[str] = []
    stored, events = EventStore._stored, SQLiteReads._events
    monkeypatch.setattr(
        EventStore, "_stored", lambda self, row: decoded.append(row.stream_id) or stored(self, row)
    )
    monkeypatch.setattr(
        SQLiteReads, "_events", lambda self, *a: [decoded.append("?") or e for e in events(self, *a)]
    )
    fast = jobs.current_status(settings, NOW)
    read_fast, decoded[:] = len(decoded), []
    monkeypatch.setattr(reads, "open_sqlite_reads", lambda _settings: None)
    slow = jobs.current_status(settings, NOW)

    assert [p.line for p in fast.problems] == [p.line for p in slow.problems]
    assert any(
        "usb: behind: its last upload failed" in p.line and "the share is gone" in p.line
        for p in fast.problems
    )
    assert read_fast < 200, read_fast
    assert decoded.count(stream) < 200, decoded.count(stream)
