"""How old each kind's last good backup may grow, and what needs someone's attention now.

A schedule's period is the longest gap between its successive due times: an hourly schedule's is an
hour, `0 9,17 * * *`'s is the 16 hours from 17:00 to 09:00. The caller works the gaps out from the
cron expression (the domain reads no cron) and passes a function from expression to period.

A kind's last good backup may grow to twice the period of its tightest enabled schedule (a kind
backed up hourly and in full daily answers to the hourly one): one run may be missed or still
running without alarm, a second may not. A kind whose schedules are all disabled is not judged:
nobody promised it a backup. A kind never backed up counts its age from when Capsule started
keeping its log, so that a new install is not overdue before its first run was due.

Three things need attention, each an `Incident` with a stable key, so that `capsule status
--check` and the alerts agree on what is wrong:

- `overdue-<kind>`: the kind's last good backup is older than it may be;
- `failed-<kind>`: the kind's last finished backup failed (a later one that completes clears it);
- `drill-failed`: the last finished restore drill failed (a later one that passes clears it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from capsule.domain.settings import SCHEDULED_BACKUPS, BackupSettings

GRACE_PERIODS = 2
"""How many periods a kind's last good backup may be old before it is overdue."""

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# A daily schedule's gap is 23 or 25 hours on the days the clock changes: still "daily".
NAMED_PERIODS = (
    (timedelta(minutes=1), timedelta(0), "every minute"),
    (HOUR, timedelta(0), "hourly"),
    (DAY, HOUR, "daily"),
    (7 * DAY, HOUR, "weekly"),
)


def period_of(due_times: Sequence[datetime]) -> timedelta | None:
    """The longest gap between successive due times (oldest first); None with fewer than two."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(due_times)]
    return max(gaps) if gaps else None


def describe_period(period: timedelta) -> str:
    """`hourly`, `daily`, `weekly`, or `every 6 h` / `every 3 days` / `every 15 min`."""
    for named, slack, name in NAMED_PERIODS:
        if abs(period - named) <= slack:
            return name
    if period >= 2 * DAY and period % DAY <= HOUR:
        return f"every {round(period / DAY)} days"
    if period >= HOUR:
        return f"every {duration(period)}"
    return f"every {round(period.total_seconds() / 60)} min"


def duration(span: timedelta) -> str:
    """A span as people say it, to the minute: `3 h 10 min`, `2 days 4 h`, `12 min`, `40 s`."""
    seconds = int(span.total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} s"
    minutes = seconds // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        day_part = f"{days} day" + ("s" if days > 1 else "")
        return f"{day_part} {hours} h" if hours else day_part
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


@dataclass(frozen=True)
class Freshness:
    """How old one kind's last good backup is, against what its tightest schedule allows."""

    kind: str
    schedule: str
    """The tightest enabled schedule that backs up this kind."""
    period: timedelta
    last_good_at: datetime | None
    """The time of the kind's newest snapshot; None: never backed up."""
    age: timedelta
    """Since the last good backup, or (never backed up) since Capsule started keeping its log."""
    overdue: bool

    @property
    def allowed(self) -> timedelta:
        return GRACE_PERIODS * self.period

    @property
    def every(self) -> str:
        return describe_period(self.period)

    def line(self) -> str:
        """`database: last good backup 3 h 10 min ago, OVERDUE (hourly)`."""
        what = f"last good backup {duration(self.age)} ago"
        if self.last_good_at is None:
            what = "never backed up"
        return f"{self.kind}: {what}{', OVERDUE' if self.overdue else ''} ({self.every})"


def freshness(
    settings: BackupSettings,
    period: Callable[[str], timedelta | None],
    last_good: Mapping[str, datetime | None],
    since: datetime,
    now: datetime,
) -> list[Freshness]:
    """Each kind some enabled schedule backs up, judged at `now`, in the order of the schedules.

    `period` gives a cron expression's period (None: it never comes round again, so it is not
    judged); `last_good` the time of each kind's newest snapshot; `since` when the log began.
    """
    tightest: dict[str, tuple[str, timedelta]] = {}
    for name, schedule in settings.schedules.items():
        if not schedule.enabled or name not in SCHEDULED_BACKUPS:
            continue
        every = period(schedule.cron)
        if every is None:
            continue
        kind: str = SCHEDULED_BACKUPS[name][0]
        if kind not in tightest or every < tightest[kind][1]:
            tightest[kind] = (name, every)
    judged = []
    for kind, (name, every) in tightest.items():
        last = last_good.get(kind)
        age = now - (last if last is not None else since)
        judged.append(Freshness(kind, name, every, last, age, age > GRACE_PERIODS * every))
    return judged


@dataclass(frozen=True)
class FinishedJob:
    """A finished backup or drill, as much of it as the incidents need."""

    job_id: str
    kind: str | None
    """The backup's kind (`database`, `files`, `all`); None for a drill."""
    status: str
    """`completed` or `failed`; a cancelled job says nothing of the backups and is passed over."""
    error: str | None = None


def last_finished(jobs: Sequence[FinishedJob], kind: str | None = None) -> FinishedJob | None:
    """The newest completed or failed job (newest first in `jobs`) of `kind`; a backup of `all` is
    a backup of each kind."""
    for job in jobs:
        if job.status not in ("completed", "failed"):
            continue
        if kind is None or job.kind in (kind, "all"):
            return job
    return None


@dataclass(frozen=True)
class Incident:
    """Something wrong now: the key names it (one incident per key at a time), the line says it."""

    key: str
    subject: str
    """The kind, `drill`, or a destination's name."""
    reason: Literal["overdue", "job_failed", "drill_failed", "consent_needed", "upload_behind"]
    line: str
    cause_job_id: str | None = None
    """The failed job, for a failure."""


def incidents(
    fresh: Sequence[Freshness],
    last_backups: Mapping[str, FinishedJob | None],
    last_drill: FinishedJob | None,
) -> list[Incident]:
    """Everything that needs attention: overdue kinds, kinds whose last backup failed, a failed drill."""
    found = [Incident(f"overdue-{f.kind}", f.kind, "overdue", f.line()) for f in fresh if f.overdue]
    for kind, job in last_backups.items():
        if job is not None and job.status == "failed":
            line = f"{kind}: the last backup (job {job.job_id}) failed: {_reason(job)}"
            found.append(Incident(f"failed-{kind}", kind, "job_failed", line, job.job_id))
    if last_drill is not None and last_drill.status == "failed":
        line = f"drill: the last restore drill (job {last_drill.job_id}) failed: {_reason(last_drill)}"
        found.append(Incident("drill-failed", "drill", "drill_failed", line, last_drill.job_id))
    return found


def consent_needed(name: str, reason: str) -> Incident:
    """A Drive destination that refused Capsule's authorization: nothing is copied there meanwhile."""
    line = f"{name}: needs consent again: run `capsule destinations renew {name}` ({reason})"
    return Incident(f"consent-{name}", name, "consent_needed", line)


def upload_behind(name: str, why: str) -> Incident:
    """A destination whose last upload failed, or that is paused: its copy lacks recent backups."""
    return Incident(f"upload-{name}", name, "upload_behind", f"{name}: behind: {why}")


def _reason(job: FinishedJob) -> str:
    return (job.error or "no reason recorded").splitlines()[0]
