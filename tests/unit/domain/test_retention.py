"""Retention policies: which snapshots a policy keeps and why, counted on the shop's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.domain.retention import (
    Candidate,
    Duration,
    check_policy,
    decide_retention,
    parse_duration,
)
from capsule.domain.settings import InvalidSetting, Retention

MADRID = ZoneInfo("Europe/Madrid")
ONLY = {name: 0 for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")}
ONLY["keep_yearly"] = 0


def policy(**rules: object) -> Retention:
    return Retention.model_validate({**ONLY, **rules})


def snap(n: int, when: datetime, *tags: str) -> Candidate:
    return Candidate(f"{n:04d}" + "0" * 60, when, frozenset(tags))


def hourly(start: datetime, hours: int) -> list[Candidate]:
    return [snap(i, start + timedelta(hours=i)) for i in range(hours)]


def kept(verdicts) -> list[str]:
    return [v.snapshot_id for v in verdicts if v.keep]


def reasons_of(verdicts) -> dict[str, tuple[str, ...]]:
    return {v.snapshot_id[:4]: v.reasons for v in verdicts}


# ---- examples ---------------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_whatever_their_age():
    history = hourly(datetime(2026, 12, 1, tzinfo=UTC), 10)
    verdicts = decide_retention(policy(keep_last=3), history, MADRID)
    assert [v.snapshot_id[:4] for v in verdicts if v.keep] == ["0009", "0008", "0007"]
    assert reasons_of(verdicts)["0009"] == ("last",)
    assert not any(v.keep for v in verdicts[3:])


def test_daily_keeps_the_newest_of_each_local_day_and_names_the_day():
    # 22:30 UTC on 5 December is 23:30 in Madrid, 23:30 UTC already the 6th there.
    history = [
        snap(1, datetime(2026, 12, 5, 8, 0, tzinfo=UTC)),
        snap(2, datetime(2026, 12, 5, 22, 30, tzinfo=UTC)),
        snap(3, datetime(2026, 12, 5, 23, 30, tzinfo=UTC)),
    ]
    verdicts = decide_retention(policy(keep_daily=5), history, MADRID)
    assert reasons_of(verdicts) == {
        "0003": ("daily 2026-12-06",),
        "0002": ("daily 2026-12-05",),
        "0001": (f"daily 2026-12-05 is kept by {history[1].snapshot_id[:12]}",),
    }
    assert kept(verdicts) == [history[2].snapshot_id, history[1].snapshot_id]


def test_every_rule_that_keeps_a_snapshot_is_named():
    when = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)  # 14:00 in Madrid
    rules = policy(
        keep_last=1,
        keep_hourly=1,
        keep_daily=1,
        keep_weekly=1,
        keep_monthly=1,
        keep_yearly=1,
        keep_within="7d",
        keep_tag=("audit",),
    )
    (verdict,) = decide_retention(rules, [snap(1, when, "audit", "keep")], MADRID)
    assert verdict.reasons == (
        "pinned",
        "last",
        "hourly 2026-12-05 14h",
        "daily 2026-12-05",
        "weekly 2026-W49",
        "monthly 2026-12",
        "yearly 2026",
        "within 7d",
        "tag audit",
    )


def test_a_snapshot_no_rule_reaches_says_so():
    history = [snap(i, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=i)) for i in range(3)]
    verdicts = decide_retention(policy(keep_last=1), history, MADRID)
    assert verdicts[-1].reasons == ("older than keep-last 1 reaches",)
    assert not verdicts[-1].keep


def test_a_pinned_snapshot_is_never_forgotten_by_a_policy():
    history = hourly(datetime(2026, 12, 1, tzinfo=UTC), 5)
    history[0] = snap(0, history[0].time, "keep")
    verdicts = decide_retention(policy(keep_last=1), history, MADRID)
    assert kept(verdicts) == [history[4].snapshot_id, history[0].snapshot_id]
    assert reasons_of(verdicts)["0000"] == ("pinned",)


def test_keep_within_counts_back_from_the_newest_snapshot_on_the_calendar():
    newest = datetime(2026, 3, 31, 12, 0, tzinfo=MADRID)
    history = [
        snap(1, newest),
        snap(2, datetime(2026, 2, 28, 12, 0, tzinfo=MADRID)),  # 31 March less a month: 28 February
        snap(3, datetime(2026, 2, 28, 11, 59, tzinfo=MADRID)),
    ]
    verdicts = decide_retention(policy(keep_within="1m"), history, MADRID)
    assert [v.keep for v in verdicts] == [True, True, False]
    assert verdicts[0].reasons == ("within 1m",)


def test_hours_across_the_night_the_clocks_go_back_are_two_buckets():
    # 25 October 2026: at 03:00 CEST Madrid goes back to 02:00 CET; 02:xx happens twice.
    first_two = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second_two = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    history = [snap(1, first_two), snap(2, second_two)]
    verdicts = decide_retention(policy(keep_hourly=5), history, MADRID)
    assert [v.keep for v in verdicts] == [True, True]
    assert [v.reasons for v in verdicts] == [("hourly 2026-10-25 02h",), ("hourly 2026-10-25 02h",)]
    # The same night is one day, however long.
    days = decide_retention(policy(keep_daily=5), history, MADRID)
    assert [v.keep for v in days] == [True, False]


def test_days_across_the_night_the_clocks_go_forward_are_local_days():
    # 29 March 2026: at 02:00 CET Madrid jumps to 03:00 CEST. 23:30 UTC on the 28th is already
    # 00:30 on the 29th in Madrid (CET, +1); 22:30 UTC on the 29th is 00:30 on the 30th (CEST, +2).
    history = [
        snap(1, datetime(2026, 3, 28, 22, 30, tzinfo=UTC)),
        snap(2, datetime(2026, 3, 28, 23, 30, tzinfo=UTC)),
        snap(3, datetime(2026, 3, 29, 21, 30, tzinfo=UTC)),
        snap(4, datetime(2026, 3, 29, 22, 30, tzinfo=UTC)),
    ]
    verdicts = decide_retention(policy(keep_daily=10), history, MADRID)
    assert reasons_of(verdicts)["0004"] == ("daily 2026-03-30",)
    assert reasons_of(verdicts)["0003"] == ("daily 2026-03-29",)
    assert not verdicts[2].keep
    assert reasons_of(verdicts)["0001"] == ("daily 2026-03-28",)
    # keep-within 1d from 00:30 CEST on the 30th reaches 00:30 CET on the 29th: 23 hours on the clock.
    within = decide_retention(policy(keep_within="1d"), history, MADRID)
    assert [v.snapshot_id[:4] for v in within if v.keep] == ["0004", "0003", "0002"]


def test_weeks_are_iso_weeks_of_the_local_date():
    history = [
        snap(1, datetime(2026, 12, 27, 12, tzinfo=MADRID)),  # a Sunday: 2026-W52
        snap(2, datetime(2026, 12, 28, 12, tzinfo=MADRID)),  # Monday: 2026-W53
        snap(3, datetime(2027, 1, 4, 12, tzinfo=MADRID)),  # 2027-W01
    ]
    verdicts = decide_retention(policy(keep_weekly=3), history, MADRID)
    assert [v.reasons for v in verdicts] == [("weekly 2027-W01",), ("weekly 2026-W53",), ("weekly 2026-W52",)]


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("7d", Duration(days=7)),
        ("2y5m7d3h", Duration(2, 5, 7, 3)),
        ("48H", Duration(hours=48)),
        ("0h", Duration()),
    ],
)
def test_durations_are_read_as_restic_writes_them(text, duration):
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["", "7", "d7", "7 days", "1w", "7d7d", "3h2d", "-1d"])
def test_a_duration_that_is_none_is_refused_naming_the_key(text):
    with pytest.raises(InvalidSetting, match=r"keep-within: .* is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"keep_daily": -1}, r"retention\.keep-daily: -1 is negative"),
        ({"keep_last": 1, "keep_yearly": -2}, r"retention\.keep-yearly: -2 is negative"),
        ({}, r"every keep-\* count is 0 and there is no keep-within"),
        ({"keep_tag": ("audit",)}, r"every keep-\* count is 0"),
        ({"keep_within": "a week"}, r"retention\.keep-within: `a week` is not a duration"),
        ({"keep_last": 1, "keep_tag": (" ",)}, r"retention\.keep-tag: a tag cannot be empty"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_key(rules, message):
    with pytest.raises(InvalidSetting, match=message):
        check_policy(policy(**rules))
    with pytest.raises(InvalidSetting, match=message):
        decide_retention(policy(**rules), hourly(datetime(2026, 1, 1, tzinfo=UTC), 2), MADRID)


def test_keep_within_alone_is_a_policy():
    check_policy(policy(keep_within="0h"))


# ---- properties -------------------------------------------------------------------------------

ZONES = st.sampled_from([MADRID, ZoneInfo("America/New_York"), UTC, ZoneInfo("Asia/Kolkata")])
START = datetime(2025, 10, 20, tzinfo=UTC)


@st.composite
def histories(draw) -> list[Candidate]:
    # Gaps from minutes to months, so that every bucket size has both crowded and empty stretches.
    gaps = draw(st.lists(st.integers(1, 60 * 24 * 40), min_size=1, max_size=40))
    tags = st.frozensets(st.sampled_from(["keep", "audit", "manual"]), max_size=2)
    moment, out = START, []
    for n, gap in enumerate(gaps):
        moment += timedelta(minutes=gap)
        out.append(Candidate(f"{n:04x}" + "ab" * 30, moment, draw(tags)))
    return out


@st.composite
def policies(draw) -> Retention:
    count = st.integers(0, 6)
    rules = {name: draw(count) for name in ONLY}
    rules["keep_within"] = draw(st.none() | st.sampled_from(["3h", "2d", "1m", "1y2m", "0h"]))
    rules["keep_tag"] = tuple(draw(st.lists(st.sampled_from(["audit", "manual"]), max_size=2, unique=True)))
    if not any(v for k, v in rules.items() if k in ONLY) and rules["keep_within"] is None:
        rules["keep_last"] = 1
    return Retention.model_validate(rules)


@settings(max_examples=300, deadline=None)
@given(policies(), histories(), ZONES)
def test_the_newest_snapshot_is_always_kept(rules, history, tz):
    newest = max(history, key=lambda s: (s.time, s.snapshot_id))
    verdicts = decide_retention(rules, history, tz)
    assert verdicts[0].snapshot_id == newest.snapshot_id and verdicts[0].keep


@settings(max_examples=300, deadline=None)
@given(policies(), histories(), ZONES, st.randoms(use_true_random=False))
def test_the_same_snapshots_in_any_order_get_the_same_verdicts(rules, history, tz, rnd):
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert decide_retention(rules, shuffled, tz) == decide_retention(rules, history, tz)


@settings(max_examples=300, deadline=None)
@given(policies(), histories(), ZONES)
def test_applying_a_policy_to_what_it_kept_forgets_nothing_more(rules, history, tz):
    first = decide_retention(rules, history, tz)
    kept_ids = {v.snapshot_id for v in first if v.keep}
    again = decide_retention(rules, [s for s in history if s.snapshot_id in kept_ids], tz)
    assert all(v.keep for v in again)
    assert len(again) == len(kept_ids)


@settings(max_examples=200, deadline=None)
@given(policies(), histories(), ZONES)
def test_a_snapshot_any_single_rule_keeps_is_kept_by_the_whole_policy(rules, history, tz):
    whole = {v.snapshot_id for v in decide_retention(rules, history, tz) if v.keep}
    values = rules.model_dump(by_alias=False)
    singles = [policy(**{name: values[name]}) for name in ONLY if values[name]]
    if rules.keep_within is not None:
        singles.append(policy(keep_within=rules.keep_within))
    if rules.keep_tag:
        singles.append(policy(keep_last=1, keep_tag=rules.keep_tag))
    for single in singles:
        assert {v.snapshot_id for v in decide_retention(single, history, tz) if v.keep} <= whole


@settings(max_examples=200, deadline=None)
@given(policies(), histories(), ZONES)
def test_pinned_snapshots_are_always_kept_and_every_forgotten_one_says_why(rules, history, tz):
    for verdict, snapshot in zip(
        decide_retention(rules, history, tz),
        sorted(history, key=lambda s: (s.time, s.snapshot_id), reverse=True),
        strict=True,
    ):
        assert verdict.snapshot_id == snapshot.snapshot_id
        if "keep" in snapshot.tags:
            assert verdict.keep and "pinned" in verdict.reasons
        assert verdict.reasons


@settings(max_examples=100, deadline=None)
@given(policies(), st.sampled_from(sorted(ONLY)), st.integers(-1000, -1))
def test_any_negative_count_is_refused_naming_its_key(rules, name, negative):
    broken = rules.model_copy(update={name: negative})
    key = name.replace("_", "-")
    with pytest.raises(InvalidSetting, match=rf"retention\.{key}: {negative} is negative"):
        decide_retention(broken, [snap(1, START)], UTC)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=8).filter(lambda t: t.strip().lower() not in ("", "none", "off")))
def test_a_duration_is_read_back_as_written_or_refused_naming_the_key(text):
    try:
        duration = parse_duration(text)
    except InvalidSetting as e:
        assert str(e).startswith("keep-within: ")
        return
    assert parse_duration(str(duration)) == duration
