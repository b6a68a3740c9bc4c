"""The service against a real event log (SQLite and PostgreSQL), its clock in the test's hands.

Several services share one log as several `capsule serve` or `capsule scheduler` processes would:
a due time fires once and a kind without a snapshot gets one first backup, however many start.
No worker runs here: the jobs stay requested, which is all these tests look at. `GET /healthz` is
asked over real HTTP on localhost.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker

from capsule.api.http import open_front_door
from capsule.domain.settings import BackupSettings
from capsule.orchestrator import projections
from capsule.orchestrator.actors import QUEUE, Dispatcher
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.service import FirstBackup, Service
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.jobs import Audit, audit_events

# Sunday 2026-12-06, 09:40 UTC: the hourly database backup is due at 10:00.
START = datetime(2026, 12, 6, 9, 40, tzinfo=UTC)
TEN = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def settings(event_store_url: str, tmp_path: Path) -> Settings:
    database = tmp_path / "shop" / "pos.db"
    database.parent.mkdir()
    database.write_bytes(b"")  # only looked at: no worker backs it up here
    return Settings(
        database=database,
        uploads=tmp_path / "shop" / "uploads",
        repository=tmp_path / "backups",
        home=tmp_path / "home",
        event_store_url=event_store_url,
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[Callable[[Clock], Service]]:
    runtimes: list[Runtime] = []

    def make(clock: Clock) -> Service:
        runtime = Runtime(settings)
        runtimes.append(runtime)
        return Service(
            runtime,
            Dispatcher(runtime, StubBroker()),
            sources={"database": settings.database, "files": settings.uploads},
            machine_zone="UTC",
            embedded_worker=False,
            clock=clock,
        )

    yield make
    for runtime in runtimes:
        runtime.close()


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls on threads that start together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def go(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def backups(service: Service) -> list[dict[str, Any]]:
    return [r for r in projections.list_jobs(service.runtime.engine, 1000) if r["job_type"] == "backup"]


def test_services_starting_together_back_up_a_kind_without_snapshot_once(
    services: Callable[[Clock], Service], settings: Settings
) -> None:
    settings.uploads.mkdir()
    started = [services(Clock(START)) for _ in range(4)]

    results: list[list[FirstBackup]] = at_once([s.first_backups for s in started])

    firsts = sorted((f.kind, f.job_id) for r in results for f in r)
    assert [kind for kind, _ in firsts] == ["database", "files"]
    assert sorted(str(j["job_id"]) for j in backups(started[0])) == sorted(str(j) for _, j in firsts)
    assert all(j["actor"] == "system:service" for j in backups(started[0]))
    # Each started job was sent its first step by the service that asked for it.
    queued = sum(s.dispatcher.broker.queues[QUEUE].qsize() for s in started)  # type: ignore[attr-defined]
    assert queued == 2


def test_a_kind_whose_source_is_missing_is_reported_and_left_out(
    services: Callable[[Clock], Service], settings: Settings
) -> None:
    service = services(Clock(START))

    first = service.first_backups()

    assert [(f.kind, f.missing, f.job_id is None) for f in first] == [
        ("database", False, False),
        ("files", True, True),
    ]
    assert first[1].source == str(settings.uploads)
    assert [j["kind"] for j in backups(service)] == ["database"]
    # Its unfinished backup counts as one: a second start asks for no other.
    assert [f.kind for f in services(Clock(START)).first_backups()] == ["files"]
    assert len(backups(service)) == 1


def test_services_ticking_together_fire_a_due_time_once(services: Callable[[Clock], Service]) -> None:
    clock = Clock(START)
    started = [services(clock) for _ in range(3)]
    clock.now = TEN + timedelta(seconds=1)

    at_once([s.tick for s in started])
    for service in started:
        service.tick()

    fired = [
        e for e in audit_events(started[0].runtime.settings, Audit()).events if e.type == "ScheduleFired"
    ]
    assert [(e.data["schedule"], e.data["due_at"]) for e in fired] == [("database", "2026-12-06T10:00:00Z")]
    (job,) = backups(started[0])
    assert job["job_id"] == fired[0].data["job_id"]
    queued = sum(s.dispatcher.broker.queues[QUEUE].qsize() for s in started)  # type: ignore[attr-defined]
    assert queued == 1


def test_a_ticker_that_raises_is_noted_and_the_others_still_run(services: Callable[[Clock], Service]) -> None:
    clock = Clock(START)
    service = services(clock)
    clock.now = TEN + timedelta(seconds=1)
    heard: list[tuple[datetime, BackupSettings]] = []

    def broken(now: datetime, settings: BackupSettings) -> None:
        raise RuntimeError("no mail server")

    service.add_ticker(broken)
    service.add_ticker(lambda now, settings: heard.append((now, settings)))
    service.tick()

    assert [now for now, _ in heard] == [clock.now]
    assert heard[0][1].schedules["database"].cron == "0 * * * *"
    assert len(backups(service)) == 1  # the scheduler ticked before the broken ticker
    health = service.health()
    assert health.last_tick_at == clock.now
    assert health.last_tick_error == "broken: RuntimeError: no mail server"
    assert not health.scheduler_alive  # ticked by hand: no tick loop runs


def test_the_tick_loop_wakes_just_after_each_whole_minute(services: Callable[[Clock], Service]) -> None:
    clock = Clock(datetime(2026, 12, 6, 9, 59, 57, 500_000, tzinfo=UTC))
    service = services(clock)

    assert service._pause() == pytest.approx(2.55)
    clock.now = datetime(2026, 12, 6, 10, 0, 0, 50_000, tzinfo=UTC)
    assert service._pause() == service.tick_seconds


def test_healthz_answers_200_while_the_service_ticks_and_503_once_it_stops(
    services: Callable[[Clock], Service],
) -> None:
    clock = Clock(START)
    service = services(clock)
    door = open_front_door("127.0.0.1", 0)
    try:
        with service.running() as first, door.serving(service):
            running = get(f"{door.url}/healthz")
            service.stop("SIGTERM", 0)
            stopped = get(f"{door.url}/healthz")
    finally:
        door.close()

    assert [f.kind for f in first] == ["database", "files"]
    assert running == (
        200,
        {
            "status": "ok",
            "version": running[1]["version"],
            "started_at": "2026-12-06T09:40:00Z",
            "scheduler": {"alive": True, "last_tick_at": "2026-12-06T09:40:00Z", "last_tick_error": None},
            "worker": {"alive": None, "mode": "broker"},
        },
    )
    assert stopped[0] == 503
    assert (stopped[1]["status"], stopped[1]["scheduler"]["alive"]) == ("unhealthy", False)


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
