"""Schedules in the shop's time zone: exactly the due times cron would give, daylight saving included.

Every test gives the clock itself; none waits for a schedule.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from capsule.orchestrator.cron import (
    InvalidSchedule,
    check_cron,
    check_zone,
    due_now,
    due_times,
    jitter,
    upcoming,
    wall_times,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
# The days the clocks change in 2026: Berlin on March 29 and October 25, New York on March 8 and
# November 1.
CHANGES = [
    (BERLIN, datetime(2026, 3, 29), 23),
    (BERLIN, datetime(2026, 10, 25), 25),
    (NEW_YORK, datetime(2026, 3, 8), 23),
    (NEW_YORK, datetime(2026, 11, 1), 25),
]


def local_day(zone: ZoneInfo, day: datetime) -> tuple[datetime, datetime]:
    """The instants just before the day starts and at its end, in that zone."""
    start = day.replace(tzinfo=zone).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=zone).astimezone(UTC)
    return start - timedelta(microseconds=1), end - timedelta(microseconds=1)


@pytest.mark.parametrize(("zone", "day", "hours"), CHANGES, ids=lambda v: str(v)[:10])
def test_an_hourly_schedule_runs_once_for_every_hour_of_real_time_on_a_change_day(zone, day, hours):
    after, until = local_day(zone, day)
    runs = due_times("0 * * * *", zone, after, until)
    assert len(runs) == hours
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize(("zone", "day", "hours"), CHANGES, ids=lambda v: str(v)[:10])
def test_a_daily_schedule_at_half_past_two_runs_once_on_a_change_day(zone, day, hours):
    after, until = local_day(zone, day)
    runs = due_times("30 2 * * *", zone, after, until)
    assert len(runs) == 1
    (run,) = runs
    if hours == 23:  # 02:30 does not exist that night: the run comes when the clock resumes, at 03:00
        assert run.astimezone(zone).hour == 3 and run.astimezone(zone).minute == 0
    else:  # 02:30 comes twice: the run is at the first
        assert run.astimezone(zone).hour == 2 and run.astimezone(zone).minute == 30
        assert run.astimezone(zone).fold == 0
        assert run + timedelta(hours=1) not in due_times(
            "30 2 * * *", zone, after, until + timedelta(hours=2)
        )


@pytest.mark.parametrize(("zone", "day", "hours"), CHANGES, ids=lambda v: str(v)[:10])
def test_days_around_a_change_have_one_daily_run_each(zone, day, hours):
    after, _ = local_day(zone, day - timedelta(days=3))
    _, until = local_day(zone, day + timedelta(days=3))
    runs = due_times("59 23 * * *", zone, after, until)
    assert [r.astimezone(zone).strftime("%H:%M") for r in runs] == ["23:59"] * 7
    assert len({r.astimezone(zone).date() for r in runs}) == 7


def test_the_plans_schedules_fall_where_the_plan_says():
    after = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)  # Saturday 23:00 in Berlin
    assert wall_times(upcoming("0 * * * *", BERLIN, after), BERLIN) == [
        "2026-12-06 00:00+01:00",
        "2026-12-06 01:00+01:00",
        "2026-12-06 02:00+01:00",
    ]
    assert wall_times(upcoming("59 23 * * *", BERLIN, after), BERLIN) == [
        "2026-12-05 23:59+01:00",
        "2026-12-06 23:59+01:00",
        "2026-12-07 23:59+01:00",
    ]
    assert wall_times(upcoming("0 3 * * 0", BERLIN, after), BERLIN) == [
        "2026-12-06 03:00+01:00",
        "2026-12-13 03:00+01:00",
        "2026-12-20 03:00+01:00",
    ]


def test_a_schedule_that_is_never_due_has_no_next_time():
    assert upcoming("0 0 30 2 *", BERLIN, datetime(2026, 1, 1, tzinfo=UTC)) == []


def test_runs_missed_while_the_machine_was_off_are_owed_once_and_said_to_be_late():
    last = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    now = datetime(2026, 12, 6, 13, 20, tzinfo=UTC)
    owed = due_now("0 * * * *", BERLIN, last, now)
    assert owed is not None
    assert owed.at == datetime(2026, 12, 6, 13, 0, tzinfo=UTC)
    assert owed.missed == 5 and owed.late == timedelta(minutes=20) and owed.is_late
    # Once run, nothing more is owed until the next hour.
    assert due_now("0 * * * *", BERLIN, owed.at, now) is None
    on_time = due_now("0 * * * *", BERLIN, owed.at, datetime(2026, 12, 6, 14, 0, 2, tzinfo=UTC))
    assert on_time is not None and on_time.missed == 1 and not on_time.is_late


def test_jitter_is_within_its_bound_the_same_everywhere_and_spread():
    due = datetime(2026, 12, 6, 13, 0, tzinfo=UTC)
    delays = [jitter(f"shop-{i}", due, 300) for i in range(200)]
    assert all(timedelta(0) <= d < timedelta(seconds=300) for d in delays)
    assert jitter("shop-1", due, 300) == jitter("shop-1", due, 300)
    assert max(delays) - min(delays) > timedelta(seconds=200)
    assert jitter("shop-1", due, 0) == timedelta(0)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day of month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day of week 8 is out of range 0-7"),
        ("0 * * *", "`0 * * *` has 4 field(s); a cron expression has 5: minute hour day-of-month"),
        ("x * * * *", "minute `x` is not a cron field"),
        ("", "has 0 field(s)"),
    ],
)
def test_a_bad_cron_expression_names_the_field_and_what_is_wrong(expression, message):
    with pytest.raises(InvalidSchedule) as caught:
        check_cron(expression)
    assert message in str(caught.value)


@pytest.mark.parametrize("expression", ["*/15 * * * *", "0 9-17 * * 1-5", "0 0 1,15 * *", "0 3 * * sun"])
def test_good_expressions_pass_and_are_written_with_single_spaces(expression):
    assert check_cron("  " + expression.replace(" ", "   ")) == expression


def test_an_unknown_time_zone_is_refused_with_examples():
    with pytest.raises(InvalidSchedule, match="there is no time zone `Europe/Atlantis`"):
        check_zone("Europe/Atlantis")
    assert check_zone("Europe/Madrid") == ZoneInfo("Europe/Madrid")
