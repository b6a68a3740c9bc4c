"""`capsule status` judges each kind's last good backup against its schedules, and `--check` lists
what needs attention: in process, against a real event log, with the clock given."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.jobs import current_status
from capsule.orchestrator.usecases.settings import ChangeSetting, change
from tests.integration.alerting import backup, drill

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    change(settings, ChangeSetting("timezone", "UTC"))
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


def lines(settings: Settings, now: datetime) -> tuple[list[str], list[str]]:
    status = current_status(settings, now)
    return [f.line() for f in status.freshness], [p.line for p in status.problems]


def test_a_recent_backup_is_fresh_and_an_old_one_overdue(settings: Settings, runtime: Runtime) -> None:
    backup(runtime, "database", NOW - timedelta(minutes=12))
    backup(runtime, "files", NOW - timedelta(days=1))

    fresh, problems = lines(settings, NOW)
    assert fresh == [
        "database: last good backup 12 min ago (hourly)",
        "files: last good backup 1 day ago (weekly)",
    ]
    assert problems == []

    later = NOW + timedelta(hours=2, minutes=58)
    fresh, problems = lines(settings, later)
    assert fresh[0] == "database: last good backup 3 h 10 min ago, OVERDUE (hourly)"
    assert problems == [fresh[0]]


def test_the_last_failed_backup_of_a_kind_is_a_problem_until_one_completes(
    settings: Settings, runtime: Runtime
) -> None:
    backup(runtime, "database", NOW - timedelta(minutes=30))
    failed = backup(runtime, "database", NOW - timedelta(minutes=5), error="the disk is full")

    (problem,) = lines(settings, NOW)[1]
    assert problem.startswith(f"database: the last backup (job {failed}) failed: ")
    assert problem.endswith("the disk is full")

    backup(runtime, "database", NOW)
    assert lines(settings, NOW)[1] == []


def test_a_failed_last_drill_is_a_problem_and_a_passing_one_clears_it(
    settings: Settings, runtime: Runtime
) -> None:
    backup(runtime, "database", NOW)
    failed = drill(runtime, NOW - timedelta(minutes=2), error="integrity_check: page 7 is damaged")

    (problem,) = lines(settings, NOW)[1]
    assert problem.startswith(f"drill: the last restore drill (job {failed}) failed: ")
    assert problem.endswith("integrity_check: page 7 is damaged")
    drill(runtime, NOW - timedelta(minutes=1))
    assert lines(settings, NOW)[1] == []


def test_a_kind_never_backed_up_says_so_and_a_disabled_one_is_not_judged(
    settings: Settings, runtime: Runtime
) -> None:
    change(settings, ChangeSetting("schedules.files.enabled", "false"))

    fresh, problems = lines(settings, NOW)
    assert fresh == ["database: never backed up (hourly)"]
    assert problems == []
    assert lines(settings, NOW + timedelta(hours=3))[1] == ["database: never backed up, OVERDUE (hourly)"]


def test_the_json_carries_each_kinds_freshness_and_the_problems(settings: Settings, runtime: Runtime) -> None:
    backup(runtime, "database", NOW - timedelta(hours=5))
    doc = current_status(settings, NOW).as_dict()

    database = doc["freshness"][0]
    assert {k: database[k] for k in ("kind", "schedule", "every", "overdue", "age_seconds")} == {
        "kind": "database",
        "schedule": "database",
        "every": "hourly",
        "overdue": True,
        "age_seconds": 5 * 3600,
    }
    assert database["allowed_seconds"] == 7200 and database["last_good_at"] == NOW - timedelta(hours=5)
    assert [p["incident"] for p in doc["problems"]] == ["overdue-database"]
