"""`capsule audit --since` and `--job` ask the event log for those events only: a shop's log grows by
thousands of events a month, and reading all of it for today's few took seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.domain.events import DestinationObjectsUploaded
from capsule.orchestrator.eventstore import EventStore
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.jobs import Audit, audit_events


def uploaded(job_id: str, n: int) -> list[DestinationObjectsUploaded]:
    return [DestinationObjectsUploaded(job_id=job_id, destination="usb", objects=()) for _ in range(n)]


def test_audit_since_a_time_and_of_one_job_decode_only_those_events(
    tmp_path: Path, event_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        database=tmp_path / "pos.db",
        repository=tmp_path / "backups",
        home=tmp_path / "home",
        event_store_url=event_store_url,
    )
    runtime = Runtime(settings)
    try:
        for _ in range(3):
            runtime.append_to(
                "destination-old", uploaded("old", 400), actor="system:upload", correlation_id="old"
            )
        time.sleep(0.01)
        since = datetime.now(UTC)
        runtime.append_to(
            "destination-new", uploaded("job-a", 3), actor="system:upload", correlation_id="job-a"
        )
        runtime.append_to(
            "destination-job-b", uploaded("job-b", 2), actor="system:worker", correlation_id="other"
        )
        everything = runtime.store.read_all(0, limit=10_000)
    finally:
        runtime.close()

    decoded: list[int] = []
    stored = EventStore._stored
    monkeypatch.setattr(EventStore, "_stored", lambda self, row: decoded.append(1) or stored(self, row))

    recent = audit_events(settings, Audit(since=since)).events
    read_recent, decoded[:] = len(decoded), []
    of_a = audit_events(settings, Audit(job_id="job-a")).events
    read_a, decoded[:] = len(decoded), []
    of_b = audit_events(settings, Audit(job_id="job-b")).events  # by its stream's name

    assert [e.position for e in recent] == [e.position for e in everything if e.recorded_at >= since]
    assert len(recent) == 5
    assert [e.position for e in of_a] == [
        e.position for e in everything if e.metadata.correlation_id == "job-a"
    ]
    assert [e.stream_id for e in of_b] == ["destination-job-b"] * 2
    assert read_recent < 50 and read_a < 50 and len(decoded) < 50, (read_recent, read_a, len(decoded))
