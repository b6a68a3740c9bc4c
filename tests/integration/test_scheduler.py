"""The scheduler against a real event log (SQLite and PostgreSQL), with the clock in the test's hands.

No test waits for a schedule: each tick is given its `now`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capsule.domain.settings import BackupSettings, with_changes
from capsule.orchestrator import projections
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.scheduler import Fired, Scheduler
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.jobs import Audit, audit_events, replay_log

# Saturday 2026-12-05, 23:30 in Berlin (UTC+1): the Sunday images backup is due at 03:00 local.
START = datetime(2026, 12, 5, 22, 30, tzinfo=UTC)
# The full database backup (daily at 23:59) and the drill (Sunday 04:00) are left out but where a
# test says otherwise.
BERLIN = with_changes(
    BackupSettings(),
    {
        "timezone": "Europe/Berlin",
        "schedules.database-full.enabled": False,
        "schedules.drill.enabled": False,
    },
)


@pytest.fixture
def settings(event_store_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database=tmp_path / "pos.db",
        repository=tmp_path / "backups",
        home=tmp_path / "home",
        event_store_url=event_store_url,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


def scheduler(runtime: Runtime, started_at: datetime = START) -> Scheduler:
    sources = {"database": "/srv/shop/data/pos.db", "files": "/srv/shop/data/uploads/products"}
    return Scheduler(runtime, sources, machine_zone="UTC", started_at=started_at)


def backups(runtime: Runtime) -> list[dict[str, object]]:
    return [r for r in projections.list_jobs(runtime.engine, limit=1000) if r["job_type"] == "backup"]


def finish(runtime: Runtime, job_id: str) -> None:
    """Mark a requested backup cancelled, so that it no longer runs (no worker runs in these tests)."""
    from capsule.domain.commands import CancelJob

    runtime.execute("backup", job_id, lambda _: CancelJob(job_id=job_id, now=START), actor="person:test")


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def test_each_schedule_starts_its_backup_once_per_due_time(runtime: Runtime) -> None:
    ticker = scheduler(runtime)

    assert ticker.tick(at(0.25), BERLIN) == []  # 23:45: nothing due yet
    first = ticker.tick(at(0.5), BERLIN)  # 00:00 Sunday: the hourly database backup
    again = ticker.tick(at(0.5) + timedelta(seconds=30), BERLIN)

    assert [(f.schedule, f.due_at, f.coalesced) for f in first] == [("database", at(0.5), False)]
    assert again == []
    (job,) = backups(runtime)
    assert (job["job_id"], job["kind"], job["actor"]) == (first[0].job_id, "database", "system:scheduler")


def test_the_daily_full_backup_asks_for_a_full_backup(runtime: Runtime) -> None:
    document = with_changes(
        BERLIN, {"schedules.database-full.enabled": True, "schedules.database.enabled": False}
    )
    (fired,) = scheduler(runtime).tick(at(0.5), document)  # 23:59 Saturday passed

    assert (fired.schedule, fired.due_at) == ("database-full", at(0.5) - timedelta(minutes=1))
    (job,) = backups(runtime)
    requested = [e for e in audit_events(runtime.settings, Audit(job_id=fired.job_id)).events]
    assert job["kind"] == "database"
    assert [e.data["full"] for e in requested if e.type == "BackupRequested"] == [True]


def test_two_schedulers_at_once_start_each_run_once(settings: Settings) -> None:
    runtimes = [Runtime(settings) for _ in range(4)]
    try:
        tickers = [scheduler(r) for r in runtimes]
        barrier = threading.Barrier(len(tickers))
        results: list[list[Fired]] = [[] for _ in tickers]

        def tick(i: int) -> None:
            barrier.wait()
            results[i] = tickers[i].tick(at(4.5), BERLIN)  # 04:00 Sunday: hourly and the images, both due

        threads = [threading.Thread(target=tick, args=(i,)) for i in range(len(tickers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        fired = sorted((f.schedule, f.due_at) for r in results for f in r)
        assert fired == [("database", at(4.5)), ("files", at(3.5))]
        assert sorted(str(j["kind"]) for j in backups(runtimes[0])) == ["database", "files"]
    finally:
        for runtime in runtimes:
            runtime.close()


def test_runs_missed_while_nothing_ran_are_started_once_and_recorded_as_late(runtime: Runtime) -> None:
    ticker = scheduler(runtime)
    (first,) = ticker.tick(at(0.5), BERLIN)
    finish(runtime, first.job_id)

    later = ticker.tick(at(5.5) + timedelta(minutes=20), BERLIN)  # 05:20: 01:00 to 05:00 were missed

    database = [f for f in later if f.schedule == "database"]
    assert [(f.due_at, f.missed) for f in database] == [(at(5.5), 5)]
    (event,) = [
        e
        for e in audit_events(runtime.settings, Audit(job_id=database[0].job_id)).events
        if e.type == "ScheduleFired"
    ]
    assert event.data["missed"] == 5 and event.data["late_seconds"] == 1200.0


def test_a_run_due_while_the_last_is_still_going_is_folded_into_it(runtime: Runtime) -> None:
    ticker = scheduler(runtime)
    (first,) = ticker.tick(at(0.5), BERLIN)  # its job is never run: it stays pending

    (second,) = ticker.tick(at(1.5), BERLIN)

    assert (second.coalesced, second.job_id) == (True, first.job_id)
    assert len(backups(runtime)) == 1
    finish(runtime, first.job_id)
    (third,) = ticker.tick(at(2.5), BERLIN)
    assert not third.coalesced and third.job_id != first.job_id
    assert len(backups(runtime)) == 2


def test_jitter_delays_a_run_and_a_disabled_schedule_never_runs(runtime: Runtime) -> None:
    document = with_changes(
        BERLIN, {"schedules.database.jitter_seconds": 600, "schedules.files.enabled": False}
    )
    ticker = scheduler(runtime)

    assert ticker.tick(at(0.5), document) == []
    fired = []
    for minute in range(0, 11):
        fired += ticker.tick(at(0.5) + timedelta(minutes=minute), document)
    assert [f.schedule for f in fired] == ["database"]
    assert all(f.schedule != "files" for f in ticker.tick(at(6), document))


def test_a_schedule_that_never_ran_owes_nothing_due_before_the_scheduler_started(runtime: Runtime) -> None:
    ticker = scheduler(runtime, started_at=at(0.75))
    assert ticker.tick(at(0.9), BERLIN) == []  # 00:00 passed before it started
    assert [f.due_at for f in ticker.tick(at(1.5), BERLIN)] == [at(1.5)]


def test_replay_rebuilds_each_schedules_last_run(runtime: Runtime) -> None:
    ticker = scheduler(runtime)
    ticker.tick(at(0.5), BERLIN)
    before = projections.last_schedule_runs(runtime.engine)

    replay_log(runtime.settings)

    assert projections.last_schedule_runs(runtime.engine) == before
    assert set(before) == {"database"}


def test_the_schedules_listing_shows_the_last_run_its_job_and_the_next_three(runtime: Runtime) -> None:
    from capsule.orchestrator.usecases.schedules import list_schedules
    from capsule.orchestrator.usecases.settings import ChangeSetting, change

    change(runtime.settings, ChangeSetting("timezone", "Europe/Berlin"))
    (fired,) = scheduler(runtime).tick(at(0.5), BERLIN)

    listing = list_schedules(runtime.settings, now=at(0.6))

    by_name = {s.name: s for s in listing.schedules}
    database = by_name["database"]
    assert (database.last_due_at, database.last_job_id, database.last_status) == (
        at(0.5),
        fired.job_id,
        "pending",
    )
    assert database.next_due == [at(1.5), at(2.5), at(3.5)]
    assert by_name["files"].last_due_at is None and by_name["files"].next_due[0] == at(3.5)
    assert listing.timezone == "Europe/Berlin"


def drills(runtime: Runtime) -> list[dict[str, object]]:
    return projections.list_jobs(runtime.engine, limit=1000, job_type="drill")


def test_the_weekly_drill_is_requested_once_after_the_images_backup(runtime: Runtime) -> None:
    document = with_changes(BERLIN, {"schedules.drill.enabled": True, "schedules.database.enabled": False})
    ticker = scheduler(runtime)

    at_three = ticker.tick(at(3.5), document)  # 03:00 Sunday: the images
    at_four = ticker.tick(at(4.5), document)  # 04:00 Sunday: the drill
    again = ticker.tick(at(4.5) + timedelta(minutes=5), document)

    assert [f.schedule for f in at_three] == ["files"]
    assert [(f.schedule, f.due_at, f.coalesced) for f in at_four] == [("drill", at(4.5), False)]
    assert again == []
    (drill,) = drills(runtime)
    assert (drill["job_id"], drill["actor"], drill["status"]) == (
        at_four[0].job_id,
        "system:scheduler",
        "pending",
    )
    assert drill["source"] == "/srv/shop/data/pos.db\n/srv/shop/data/uploads/products"


def test_a_drill_due_while_the_last_one_still_runs_joins_it(runtime: Runtime) -> None:
    document = with_changes(
        BERLIN,
        {
            "schedules.drill.enabled": True,
            "schedules.database.enabled": False,
            "schedules.files.enabled": False,
        },
    )
    ticker = scheduler(runtime)
    (first,) = ticker.tick(at(4.5), document)  # its job is never run: it stays pending

    (second,) = ticker.tick(at(4.5 + 24 * 7), document)  # the next Sunday

    assert (second.schedule, second.coalesced, second.job_id) == ("drill", True, first.job_id)
    assert len(drills(runtime)) == 1
