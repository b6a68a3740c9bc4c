"""Staleness and incidents: how old a kind's last good backup may be, and what needs attention.

Periods are given as plain functions of the cron text here; the orchestrator reads them from croniter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from capsule.domain.settings import BackupSettings, with_changes
from capsule.domain.staleness import (
    FinishedJob,
    describe_period,
    duration,
    freshness,
    incidents,
    last_finished,
    period_of,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=30)
PERIODS = {"0 * * * *": timedelta(hours=1), "59 23 * * *": timedelta(days=1), "0 3 * * 0": timedelta(days=7)}


def period(cron: str) -> timedelta | None:
    return PERIODS.get(cron)


def ago(**span: float) -> datetime:
    return NOW - timedelta(**span)


def test_the_period_is_the_longest_gap_between_due_times():
    nine, five = datetime(2026, 12, 7, 9, tzinfo=UTC), datetime(2026, 12, 7, 17, tzinfo=UTC)
    assert period_of([nine, five, nine + timedelta(days=1)]) == timedelta(hours=16)
    assert period_of([nine]) is None


@pytest.mark.parametrize(
    ("span", "said"),
    [
        (timedelta(hours=1), "hourly"),
        (timedelta(hours=25), "daily"),
        (timedelta(days=7), "weekly"),
        (timedelta(hours=16), "every 16 h"),
        (timedelta(days=3), "every 3 days"),
        (timedelta(minutes=15), "every 15 min"),
    ],
)
def test_a_period_is_named_as_people_say_it(span, said):
    assert describe_period(span) == said


def test_durations_are_said_to_the_minute():
    assert duration(timedelta(hours=3, minutes=10, seconds=59)) == "3 h 10 min"
    assert duration(timedelta(minutes=12)) == "12 min"
    assert duration(timedelta(days=2, hours=4)) == "2 days 4 h"
    assert duration(timedelta(seconds=40)) == "40 s"


def test_a_kind_answers_to_its_tightest_enabled_schedule():
    fresh = freshness(
        BackupSettings(), period, {"database": ago(hours=3, minutes=10), "files": ago(days=2)}, SINCE, NOW
    )
    by_kind = {f.kind: f for f in fresh}
    assert (by_kind["database"].schedule, by_kind["database"].overdue) == ("database", True)
    assert by_kind["database"].line() == "database: last good backup 3 h 10 min ago, OVERDUE (hourly)"
    assert by_kind["files"].line() == "files: last good backup 2 days ago (weekly)"


def test_a_backup_within_twice_the_period_is_not_overdue():
    fresh = freshness(BackupSettings(), period, {"database": ago(minutes=119)}, SINCE, NOW)
    assert fresh[0].line() == "database: last good backup 1 h 59 min ago (hourly)"
    assert not fresh[0].overdue


def test_with_the_hourly_schedule_disabled_the_daily_full_one_judges_the_database():
    settings = with_changes(BackupSettings(), {"schedules.database.enabled": False})
    (database, _files) = freshness(settings, period, {"database": ago(hours=30)}, SINCE, NOW)
    assert (database.schedule, database.overdue, database.every) == ("database-full", False, "daily")


def test_a_kind_whose_schedules_are_all_disabled_is_not_judged():
    settings = with_changes(BackupSettings(), {"schedules.files.enabled": False})
    fresh = freshness(settings, period, {"files": None}, SINCE, NOW)
    assert [f.kind for f in fresh] == ["database"]


def test_a_kind_never_backed_up_counts_from_when_the_log_began():
    new = freshness(BackupSettings(), period, {}, NOW - timedelta(minutes=5), NOW)
    old = freshness(BackupSettings(), period, {}, SINCE, NOW)
    assert [f.line() for f in new] == [
        "database: never backed up (hourly)",
        "files: never backed up (weekly)",
    ]
    assert [f.overdue for f in old] == [True, True]
    assert old[0].line() == "database: never backed up, OVERDUE (hourly)"


def test_the_last_finished_backup_of_a_kind_passes_over_running_and_cancelled_ones():
    jobs = [
        FinishedJob("j4", "database", "running"),
        FinishedJob("j3", "database", "cancelled"),
        FinishedJob("j2", "all", "failed", "the disk is full\nmore"),
        FinishedJob("j1", "files", "completed"),
    ]
    assert last_finished(jobs, "database") == jobs[2]
    assert last_finished(jobs, "files") == jobs[2]  # a backup of `all` backs up the images too
    assert last_finished(jobs[3:], "database") is None


def test_incidents_name_every_problem_once_with_a_line_to_print():
    fresh = freshness(BackupSettings(), period, {"database": ago(hours=5), "files": ago(days=1)}, SINCE, NOW)
    found = incidents(
        fresh,
        {"database": FinishedJob("j2", "database", "failed", "the disk is full\nTraceback"), "files": None},
        FinishedJob("d1", None, "failed", "integrity_check: row 3 missing from index"),
    )
    assert [(i.key, i.reason) for i in found] == [
        ("overdue-database", "overdue"),
        ("failed-database", "job_failed"),
        ("drill-failed", "drill_failed"),
    ]
    assert found[1].line == "database: the last backup (job j2) failed: the disk is full"
    assert found[2].line == (
        "drill: the last restore drill (job d1) failed: integrity_check: row 3 missing from index"
    )


def test_nothing_wrong_is_no_incident():
    good = {"database": ago(minutes=5), "files": ago(days=1)}
    fresh = freshness(BackupSettings(), period, good, SINCE, NOW)
    last = {"database": FinishedJob("j1", "database", "completed"), "files": None}
    assert incidents(fresh, last, FinishedJob("d1", None, "completed")) == []
