"""An incident's stream of alerts, folded: is it open, and which deliveries are owed at `now`.

Each incident key (`overdue-database`, `failed-files`, `drill-failed`) has one stream. In it an
incident is raised (`AlertRaised`), told to each target once raised and once cleared
(`AlertDelivered`, or `AlertDeliveryFailed` with the next try), and cleared (`AlertCleared`); the
same key may be raised again later, as a new incident with a new id. Only the newest incident is
still told: an older one was told, or gave up, long ago.

A failed delivery is tried again after 30 s, then 1, 2, 4 and 8 minutes; after the sixth try it is
given up (`next_try_at` None) and `capsule alerts` shows it. A target added while an incident is
open hears of it at the next tick, for up to `SEND_WINDOW` after the notice: past that, an old
notice is not sent to a new target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from capsule.domain.events import (
    AlertChannel,
    AlertCleared,
    AlertDelivered,
    AlertDeliveryFailed,
    AlertNotice,
    AlertRaised,
    Event,
)

MAX_ATTEMPTS = 6
FIRST_RETRY = timedelta(seconds=30)
SEND_WINDOW = timedelta(hours=1)


def next_try(attempt: int, at: datetime) -> datetime | None:
    """When to try again after try number `attempt` failed at `at`; None once it is the last."""
    if attempt >= MAX_ATTEMPTS:
        return None
    return at + FIRST_RETRY * (1 << (attempt - 1))


@dataclass(frozen=True)
class Delivery:
    """One notice's tries at one target."""

    attempts: int = 0
    delivered: bool = False
    next_try_at: datetime | None = None
    last_error: str | None = None

    @property
    def gave_up(self) -> bool:
        return not self.delivered and self.attempts > 0 and self.next_try_at is None


DeliveryKey = tuple[AlertNotice, AlertChannel, str]
"""(notice, channel, target) of the newest incident."""


@dataclass(frozen=True)
class IncidentStream:
    """The newest incident of one key, and what its stream's version is."""

    version: int = 0
    raised: AlertRaised | None = None
    cleared: AlertCleared | None = None
    deliveries: dict[DeliveryKey, Delivery] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.raised is not None and self.cleared is None

    @property
    def alert_id(self) -> str | None:
        return self.raised.job_id if self.raised is not None else None


def evolve(state: IncidentStream, event: Event) -> IncidentStream:
    state = replace(state, version=state.version + 1)
    if isinstance(event, AlertRaised):
        return replace(state, raised=event, cleared=None, deliveries={})
    if event.job_id != state.alert_id:
        return state  # an older incident's late news
    if isinstance(event, AlertCleared):
        return replace(state, cleared=event)
    if isinstance(event, AlertDelivered | AlertDeliveryFailed):
        key: DeliveryKey = (event.notice, event.channel, event.target)
        if isinstance(event, AlertDelivered):
            done = Delivery(event.attempt, True, None, None)
        else:
            done = Delivery(event.attempt, False, event.next_try_at, event.error)
        return replace(state, deliveries={**state.deliveries, key: done})
    return state


def replay(events: Iterable[Event]) -> IncidentStream:
    state = IncidentStream()
    for event in events:
        state = evolve(state, event)
    return state


@dataclass(frozen=True)
class Owed:
    """A try owed now: `notice` of the stream's newest incident, to one target, try number `attempt`."""

    notice: AlertNotice
    channel: AlertChannel
    target: str
    attempt: int


def owed(state: IncidentStream, targets: Sequence[tuple[AlertChannel, str]], now: datetime) -> list[Owed]:
    """Every try owed at `now` to the `targets` set now: raised first, then cleared."""
    notices: list[tuple[AlertNotice, datetime]] = []
    if state.raised is not None:
        notices.append(("raised", state.raised.at))
    if state.cleared is not None:
        notices.append(("cleared", state.cleared.at))
    found = []
    for notice, at in notices:
        for channel, target in targets:
            tried = state.deliveries.get((notice, channel, target), Delivery())
            if tried.delivered or tried.gave_up:
                continue
            if tried.attempts == 0 and now - at > SEND_WINDOW:
                continue
            if tried.next_try_at is not None and now < tried.next_try_at:
                continue
            found.append(Owed(notice, channel, target, tried.attempts + 1))
    return found
