"""Use cases of alerts: the incidents open now and the recent ones, and a test alert to every target.

The alerts themselves are raised, cleared and delivered by `orchestrator/alerts.py`, which a service
loop ticks; these read what it recorded, or send one test through the same targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings


class NoAlertTargets(CapsuleError):
    """Raised when a test alert is asked for and no target is set."""

    category = Category.INVALID_INPUT


@dataclass(frozen=True)
class DeliveryView:
    """One notice's tries at one target."""

    notice: str
    channel: str
    target: str
    attempts: int
    delivered: bool
    next_try_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class AlertView:
    """One incident: when it was raised, whether it cleared, and how each target was told."""

    alert_id: str
    incident: str
    reason: str
    summary: str
    raised_at: datetime
    cleared_at: datetime | None = None
    cleared_summary: str | None = None
    deliveries: tuple[DeliveryView, ...] = field(default_factory=tuple)

    @property
    def is_open(self) -> bool:
        return self.cleared_at is None


@dataclass(frozen=True)
class AlertList:
    open: list[AlertView]
    recent: list[AlertView]
    """The newest incidents, open or cleared, newest first."""


@dataclass(frozen=True)
class TestSent:
    """A test alert's try at each target: `error` None when it arrived."""

    tries: list[tuple[str, str, str | None]]
    """(channel, target, error)."""

    @property
    def ok(self) -> bool:
        return all(error is None for _, _, error in self.tries)


def list_alerts(settings: Settings, limit: int = 20) -> AlertList:
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.alerts import KEYS  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        found: list[AlertView] = []
        for key in KEYS:
            found += _incidents(
                [codec.decode(e) for e in runtime.store.read_stream(codec.alert_stream_id(key))]
            )
    finally:
        runtime.close()
    found.sort(key=lambda a: a.raised_at, reverse=True)
    return AlertList([a for a in found if a.is_open], found[:limit])


def _incidents(events: list[object]) -> list[AlertView]:
    from capsule.domain.events import (  # noqa: PLC0415
        AlertCleared,
        AlertDelivered,
        AlertDeliveryFailed,
        AlertRaised,
    )

    views: dict[str, AlertView] = {}
    for event in events:
        if isinstance(event, AlertRaised):
            views[event.job_id] = AlertView(
                event.job_id, event.incident, event.reason, event.summary, event.at
            )
            continue
        view = views.get(getattr(event, "job_id", ""))
        if view is None:
            continue
        if isinstance(event, AlertCleared):
            views[view.alert_id] = replace(view, cleared_at=event.at, cleared_summary=event.summary)
        elif isinstance(event, AlertDelivered | AlertDeliveryFailed):
            failed = isinstance(event, AlertDeliveryFailed)
            told = DeliveryView(
                event.notice,
                event.channel,
                event.target,
                event.attempt,
                not failed,
                event.next_try_at if isinstance(event, AlertDeliveryFailed) else None,
                event.error if isinstance(event, AlertDeliveryFailed) else None,
            )
            others = tuple(
                d
                for d in view.deliveries
                if (d.notice, d.channel, d.target) != (told.notice, told.channel, told.target)
            )
            views[view.alert_id] = replace(view, deliveries=(*others, told))
    return list(views.values())


def send_test_alert(settings: Settings) -> TestSent:
    """Send a test alert to every target the settings name, now; each try is recorded."""
    from capsule.orchestrator.alerts import Alerter  # noqa: PLC0415
    from capsule.orchestrator.health import settings_document  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        document = settings_document(runtime.engine)
        alerter = Alerter.of(runtime)
        if not alerter.targets(document):
            raise NoAlertTargets(
                "no alert target is set; set one with `capsule settings set alerts.webhook URL`, or "
                "alerts.email and alerts.smtp.host"
            )
        tries = alerter.send_test(runtime.clock(), document)
    finally:
        runtime.close()
    return TestSent([(t.channel, t.target, t.error) for t in tries])
