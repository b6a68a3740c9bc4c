"""When a schedule is due: cron expressions read by croniter, in the shop's time zone.

croniter walks the shop's wall clock; this module turns each wall-clock time into the instants it
stands for, which is where daylight saving comes in:

- A time the clock skips (02:30 on the night it jumps from 02:00 to 03:00) runs at the first minute
  that exists after it (03:00), once.
- A time the clock shows twice (02:30 on the night it goes back from 03:00 to 02:00) runs once, at
  the first of the two, for a schedule with a fixed hour ("daily at 02:30"). A schedule whose hour
  is `*` or a step (`*/2`) runs at both, as it runs every such hour of real time: an hourly
  schedule runs 25 times that day, and 23 times on the day the clock jumps.

That is what the classic cron daemon does. Every instant is returned in UTC.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from capsule.domain.errors import CapsuleError, Category

FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
FIELD_NAMES = " ".join(name.replace(" ", "-") for name, _, _ in FIELDS)
# The widest the clock moves at a transition, with room: wall-clock times this far around a
# window are looked at, so that none whose instant falls inside it is missed.
MARGIN = timedelta(hours=3)
MINUTE = timedelta(minutes=1)


class InvalidSchedule(CapsuleError):
    """A cron expression or time zone that cannot be used; the message names what is wrong."""

    category = Category.INVALID_INPUT


def check_cron(expression: str) -> str:
    """The expression with its fields separated by one space; InvalidSchedule says what is wrong."""
    fields = expression.split()
    if len(fields) != len(FIELDS):
        raise InvalidSchedule(
            f"`{expression}` has {len(fields)} field(s); a cron expression has {len(FIELDS)}: {FIELD_NAMES} "
            "(for example `0 * * * *`, every hour on the hour)"
        )
    for i, (name, low, high) in enumerate(FIELDS):
        alone = ["*"] * len(FIELDS)
        alone[i] = fields[i]
        if croniter.is_valid(" ".join(alone)):
            continue
        for number in re.findall(r"\d+", fields[i]):
            if not low <= int(number) <= high and not _is_step(fields[i], number):
                raise InvalidSchedule(f"{name} {int(number)} is out of range {low}-{high}")
        raise InvalidSchedule(
            f"{name} `{fields[i]}` is not a cron field: use a number ({low}-{high}), `*`, a range (`1-5`), "
            "a list (`1,15`) or a step (`*/15`)"
        )
    normal = " ".join(fields)
    if not croniter.is_valid(normal):  # each field reads alone, but not together
        raise InvalidSchedule(f"`{expression}` is not a cron expression croniter can read")
    return normal


def _is_step(field: str, number: str) -> bool:
    return bool(re.search(rf"/{number}(?:\D|$)", field))


def check_zone(name: str) -> ZoneInfo:
    """The time zone named `name` (`Europe/Madrid`); InvalidSchedule when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidSchedule(
            f"there is no time zone `{name}`; use a name from the tz database, such as `Europe/Madrid` or "
            "`America/New_York`"
        ) from e


def _every_hour(expression: str) -> bool:
    hour = expression.split()[1]
    return hour == "*" or hour.startswith("*/")


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instants(wall: datetime, zone: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The instants a wall-clock time of `zone` stands for (none, one, or two at a fold)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(first, zone) != wall:  # skipped: run when the clock resumes
        later = wall + MINUTE
        while _wall(moved := later.replace(tzinfo=zone).astimezone(UTC), zone) != later:
            later += MINUTE
        return [moved]
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if second != first and both_folds:
        return [first, second]
    return [first]


def due_times(expression: str, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Every instant (UTC) the schedule is due in (after, until], oldest first."""
    expression = check_cron(expression)
    both_folds = _every_hour(expression)
    start = (after.astimezone(zone) - MARGIN).replace(tzinfo=None)
    stop = (until.astimezone(zone) + MARGIN).replace(tzinfo=None)
    found: set[datetime] = set()
    walk = croniter(expression, start)
    try:
        while (wall := walk.get_next(datetime)) <= stop:
            found.update(t for t in _instants(wall, zone, both_folds) if after < t <= until)
    except CroniterBadDateError:  # `0 0 30 2 *`: every field reads, yet no date has them all
        pass
    return sorted(found)


def upcoming(expression: str, zone: ZoneInfo, after: datetime, count: int = 3) -> list[datetime]:
    """The next `count` due instants after `after`."""
    try:
        croniter(check_cron(expression), _wall(after, zone)).get_next(datetime)
    except CroniterBadDateError:
        return []
    found: list[datetime] = []
    window = timedelta(days=2)
    start = after
    while len(found) < count:
        found += due_times(expression, zone, start, start + window)
        start += window
        window = min(window * 2, timedelta(days=800))
    return found[:count]


@dataclass(frozen=True)
class Due:
    """What a scheduler owes a schedule at `now`: one run, for the newest due time missed."""

    at: datetime
    missed: int  # due times that passed without a run, this one included
    late: timedelta

    @property
    def is_late(self) -> bool:
        return self.missed > 1 or self.late > timedelta(minutes=1)


def due_now(expression: str, zone: ZoneInfo, last_due: datetime, now: datetime) -> Due | None:
    """The run owed at `now`, if any, given the due time of the last run.

    Runs missed while nothing was running (a machine switched off) are owed once, not once each:
    the newest of them, with how many were missed and how late it is.
    """
    missed = due_times(expression, zone, last_due, now)
    if not missed:
        return None
    return Due(at=missed[-1], missed=len(missed), late=now - missed[-1])


def jitter(schedule: str, due: datetime, seconds: float) -> timedelta:
    """A delay in [0, seconds) for a schedule's run, the same in every process that computes it."""
    if seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule}\n{due.astimezone(UTC).isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=fraction * seconds)


def wall_times(instants: list[datetime], zone: ZoneInfo) -> list[str]:
    """Instants as the shop's clock shows them, with its offset: `2026-03-29 03:00+02:00`."""
    return [t.astimezone(zone).isoformat(" ", "minutes") for t in instants]
