"""An incident's stream, folded: open or not, and which tries are owed to which target when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from capsule.domain.alerts import SEND_WINDOW, Owed, next_try, owed, replay
from capsule.domain.events import AlertCleared, AlertDelivered, AlertDeliveryFailed, AlertRaised

T0 = datetime(2026, 12, 6, 13, 0, tzinfo=UTC)
EMAIL = ("email", "owner@shop.example")
HOOK = ("webhook", "https://hooks.example.com/… (5d0e61b2)")


def raised(alert_id: str = "a1", at: datetime = T0) -> AlertRaised:
    return AlertRaised(
        job_id=alert_id,
        incident="overdue-database",
        reason="overdue",
        subject="database",
        summary="database: last good backup 3 h 10 min ago, OVERDUE (hourly)",
        cause_job_id=None,
        at=at,
    )


def cleared(alert_id: str = "a1", at: datetime = T0 + timedelta(hours=1)) -> AlertCleared:
    return AlertCleared(job_id=alert_id, incident="overdue-database", summary="database: ok", at=at)


def delivered(target: tuple[str, str], notice: str = "raised", attempt: int = 1, alert_id: str = "a1"):
    return AlertDelivered(
        job_id=alert_id,
        incident="overdue-database",
        notice=notice,
        channel=target[0],
        target=target[1],
        attempt=attempt,
        at=T0,
    )


def failed(target: tuple[str, str], attempt: int, retry: datetime | None) -> AlertDeliveryFailed:
    return AlertDeliveryFailed(
        job_id="a1",
        incident="overdue-database",
        notice="raised",
        channel=target[0],
        target=target[1],
        attempt=attempt,
        error="HTTP 503",
        next_try_at=retry,
        at=T0,
    )


def test_a_failed_try_waits_longer_each_time_and_the_sixth_is_the_last():
    waits = [next_try(n, T0) for n in range(1, 7)]
    assert [w - T0 for w in waits[:5] if w] == [timedelta(seconds=s) for s in (30, 60, 120, 240, 480)]
    assert waits[5] is None


def test_a_raised_incident_is_owed_to_every_target_once():
    state = replay([raised()])
    assert state.is_open and state.version == 1
    assert owed(state, [EMAIL, HOOK], T0) == [Owed("raised", *EMAIL, 1), Owed("raised", *HOOK, 1)]
    assert owed(replay([raised(), delivered(EMAIL), delivered(HOOK)]), [EMAIL, HOOK], T0) == []


def test_a_failed_try_is_owed_again_only_once_its_wait_is_over():
    state = replay([raised(), delivered(EMAIL), failed(HOOK, 1, T0 + timedelta(seconds=30))])
    assert owed(state, [EMAIL, HOOK], T0 + timedelta(seconds=29)) == []
    assert owed(state, [EMAIL, HOOK], T0 + timedelta(seconds=30)) == [Owed("raised", *HOOK, 2)]
    assert owed(replay([raised(), failed(HOOK, 6, None)]), [HOOK], T0 + timedelta(days=1)) == []


def test_a_cleared_incident_owes_its_clearing_and_is_no_longer_open():
    state = replay([raised(), delivered(EMAIL), cleared()])
    assert not state.is_open
    assert owed(state, [EMAIL], T0 + timedelta(hours=1)) == [Owed("cleared", *EMAIL, 1)]


def test_an_old_notice_is_not_sent_to_a_target_added_long_after():
    state = replay([raised(), delivered(EMAIL)])
    assert owed(state, [EMAIL, HOOK], T0 + SEND_WINDOW) == [Owed("raised", *HOOK, 1)]
    assert owed(state, [EMAIL, HOOK], T0 + SEND_WINDOW + timedelta(seconds=1)) == []


def test_a_new_incident_starts_afresh_and_late_news_of_the_old_one_changes_nothing():
    state = replay([raised(), delivered(EMAIL), cleared(), raised("a2", T0 + timedelta(hours=2))])
    late = replay([*[raised(), cleared(), raised("a2")], delivered(EMAIL, alert_id="a1")])

    assert state.is_open and state.alert_id == "a2" and state.version == 4
    assert owed(state, [EMAIL], T0 + timedelta(hours=2)) == [Owed("raised", *EMAIL, 1)]
    assert late.deliveries == {}
