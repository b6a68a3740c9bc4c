"""Retention: which snapshots a policy keeps, and why, in restic's vocabulary.

A policy (`settings.Retention`, one per kind) keeps the newest `keep-last` snapshots, the newest
snapshot of each of the newest `keep-hourly` hours that have one (and so on for days, ISO weeks,
months and years), every snapshot taken within `keep-within` of the newest one, and every snapshot
that carries a tag of `keep-tag`. A snapshot is forgotten only when no rule keeps it. Hours, days,
weeks, months and years are counted on the shop's clock (the caller passes its zone): the daily
snapshot of 5 December is the newest one taken on 5 December in the shop.

Two rules hold whatever a policy says: the newest snapshot of a group is always kept (every valid
policy keeps it, and `check_policy` refuses one that would not), and a snapshot tagged `keep`
(`PIN_TAG`) is pinned: no policy forgets it.

The domain has no clock: `keep-within` counts back from the newest snapshot, as restic does, so a
shop whose backups stopped for a month does not lose the snapshots it still has to the calendar.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from capsule.domain.settings import InvalidSetting, Retention

PIN_TAG = "keep"
"""The tag that pins a snapshot: never forgotten by a policy."""

COUNTS = ("keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly")
"""The rules that count, in the order their reasons are listed."""

_DURATION = re.compile(r"(\d+)([ymdh])")
_UNITS = {"y": "years", "m": "months", "d": "days", "h": "hours"}


@dataclass(frozen=True, slots=True)
class Duration:
    """restic's `2y5m7d3h`: years, months and days on the calendar, hours on the clock."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    def before(self, moment: datetime, tz: tzinfo) -> datetime:
        """The instant this long before `moment`, the calendar part counted in `tz`."""
        local = moment.astimezone(tz)
        months = local.year * 12 + local.month - 1 - self.years * 12 - self.months
        year, month = divmod(months, 12)
        day = min(local.day, calendar.monthrange(year, month + 1)[1])
        wall = local.replace(year=year, month=month + 1, day=day, tzinfo=None) - timedelta(days=self.days)
        return wall.replace(tzinfo=tz) - timedelta(hours=self.hours)


def parse_duration(text: str, key: str = "keep-within") -> Duration:
    """`2y5m7d3h` (any of the parts, in that order); InvalidSetting naming `key` otherwise."""
    spelled = text.strip().lower()
    parts = _DURATION.findall(spelled)
    units = [unit for _, unit in parts]
    in_order = units == sorted(set(units), key="ymdh".index)
    if not spelled or "".join(n + u for n, u in parts) != spelled or not in_order:
        raise InvalidSetting(
            f"{key}: `{text}` is not a duration; write it as restic does, a number and a unit for each "
            "part: `7d` (days), `48h` (hours), `2y5m7d3h` (years, months, days, hours), or `none`"
        )
    return Duration(**{_UNITS[unit]: int(n) for n, unit in parts})


def check_policy(policy: Retention, where: str = "retention") -> None:
    """InvalidSetting naming the key when `policy` cannot be applied: a negative count, a duration
    that is none, an empty tag, or nothing that would keep the newest snapshot."""
    values = policy.model_dump(by_alias=True)
    for name in COUNTS:
        if values[name] < 0:
            raise InvalidSetting(
                f"{where}.{name}: {values[name]} is negative; give 0 (the rule keeps nothing) or more"
            )
    if policy.keep_within is not None:
        parse_duration(policy.keep_within, f"{where}.keep-within")
    for tag in policy.keep_tag:
        if not tag.strip():
            raise InvalidSetting(f"{where}.keep-tag: a tag cannot be empty; list tags separated by commas")
    if not any(values[name] for name in COUNTS) and policy.keep_within is None:
        raise InvalidSetting(
            f"{where}: every keep-* count is 0 and there is no keep-within, which would forget every "
            f"snapshot; keep at least one (for example `{where}.keep-last 1`)"
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A snapshot a policy judges: its id, when it was taken (aware) and its tags."""

    snapshot_id: str
    time: datetime
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a policy decided of one snapshot: kept, with every rule that keeps it, or forgotten,
    with what a person needs to see why (`reasons` then says which newer snapshot holds its slot)."""

    snapshot_id: str
    time: datetime
    keep: bool
    reasons: tuple[str, ...]


def _newest_first(snapshots: Iterable[Candidate]) -> list[Candidate]:
    return sorted(snapshots, key=lambda s: (s.time, s.snapshot_id), reverse=True)


def _buckets(moment: datetime, tz: tzinfo) -> dict[str, tuple[object, str]]:
    """Per counting rule, the bucket a snapshot falls in (a key that orders with time) and its name."""
    local = moment.astimezone(tz)
    iso = local.isocalendar()
    hour = local.replace(minute=0, second=0, microsecond=0)
    # The hour with its offset: the two 02:00 hours of the night the clocks go back are two hours.
    return {
        "keep-hourly": ((hour, local.utcoffset()), f"hourly {local:%Y-%m-%d %H}h"),
        "keep-daily": (local.date(), f"daily {local:%Y-%m-%d}"),
        "keep-weekly": ((iso.year, iso.week), f"weekly {iso.year}-W{iso.week:02d}"),
        "keep-monthly": ((local.year, local.month), f"monthly {local:%Y-%m}"),
        "keep-yearly": (local.year, f"yearly {local.year}"),
    }


def decide_retention(policy: Retention, snapshots: Iterable[Candidate], tz: tzinfo) -> list[Verdict]:
    """A verdict for each snapshot of one group (one kind of one source), newest first.

    The same snapshots in any order give the same verdicts; applying the policy again to the
    snapshots it kept forgets nothing more.
    """
    check_policy(policy)
    ordered = _newest_first(snapshots)
    if not ordered:
        return []
    counts = policy.model_dump(by_alias=True)
    left = {name: counts[name] for name in COUNTS}
    last_bucket: dict[str, object] = {}
    holder: dict[tuple[str, object], str] = {}
    within = parse_duration(policy.keep_within) if policy.keep_within is not None else None
    since = within.before(ordered[0].time, tz) if within is not None else None
    verdicts = []
    for snapshot in ordered:
        reasons: list[str] = []
        if PIN_TAG in snapshot.tags:
            reasons.append("pinned")
        if left["keep-last"] > 0:
            left["keep-last"] -= 1
            reasons.append("last")
        blocked: list[str] = []
        for name, (bucket, label) in _buckets(snapshot.time, tz).items():
            if left[name] > 0 and last_bucket.get(name, _NONE) != bucket:
                left[name] -= 1
                last_bucket[name] = bucket
                holder[name, bucket] = snapshot.snapshot_id
                reasons.append(label)
            elif (name, bucket) in holder:
                blocked.append(f"{label} is kept by {holder[name, bucket][:12]}")
        if since is not None and within is not None and snapshot.time >= since:
            reasons.append(f"within {within}")
        reasons += [f"tag {tag}" for tag in policy.keep_tag if tag in snapshot.tags]
        if reasons:
            verdicts.append(Verdict(snapshot.snapshot_id, snapshot.time, True, tuple(reasons)))
        else:
            why = tuple(blocked[:1]) or (f"older than {describe(policy)} reaches",)
            verdicts.append(Verdict(snapshot.snapshot_id, snapshot.time, False, why))
    return verdicts


_NONE = object()


def describe(policy: Retention) -> str:
    """The policy in one line, its rules that keep something: `keep-last 3, keep-daily 14, ...`."""
    values = policy.model_dump(by_alias=True)
    parts = [f"{name} {values[name]}" for name in COUNTS if values[name]]
    if policy.keep_within is not None:
        parts.append(f"keep-within {policy.keep_within}")
    if policy.keep_tag:
        parts.append("keep-tag " + ",".join(policy.keep_tag))
    return ", ".join(parts) or "no rule"
