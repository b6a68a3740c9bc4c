"""Use case: run Capsule as a service until a signal stops it (`capsule serve`, `capsule scheduler`).

`serve` runs the scheduler, the embedded worker (unless CAPSULE_BROKER_URL names a broker) and an
HTTP front door in one process (`orchestrator/service.py`). With `scheduler_only` it runs the
scheduler alone, for distributed mode, and refuses to start without a broker: nothing would run
the jobs it starts. The front door is given by the caller (`capsule.api.http`), which is how the
HTTP layer stays above this one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.orchestrator.alerts import Alerter
    from capsule.orchestrator.service import FirstBackup, FrontDoor, Service, Stopped

GRACE_SECONDS = 30.0
"""How long a running step may go on after SIGTERM by default (a systemd unit's TimeoutStopSec
must be longer: docs/capsule.service)."""


class NoBroker(CapsuleError):
    """Raised when `capsule scheduler` starts without CAPSULE_BROKER_URL: no worker would hear it."""

    category = Category.INVALID_SETTING


@dataclass(frozen=True)
class Serve:
    host: str | None = None
    """None: CAPSULE_HTTP_HOST."""
    port: int | None = None
    """None: CAPSULE_HTTP_PORT."""
    scheduler_only: bool = False
    """Distributed mode: no worker here, and a broker is required."""
    grace_seconds: float = GRACE_SECONDS
    """How long a running step may go on after SIGTERM before it is recorded as interrupted."""


@dataclass(frozen=True)
class PlannedSchedule:
    name: str
    cron: str
    enabled: bool
    next_due: datetime | None


@dataclass(frozen=True)
class ServicePlan:
    """What the service does and when, as it starts."""

    url: str | None
    """The front door's address; None: no HTTP."""
    worker: str
    """`embedded` (steps run in this process) or `broker` (`capsule worker` processes run them)."""
    timezone: str
    schedules: list[PlannedSchedule]
    first_backups: list[FirstBackup]
    grace_seconds: float
    alert_targets: list[str]
    """Where alerts go (`email owner@example.com`, `webhook https://host/…`); empty: nowhere."""
    retention_auto: bool = True
    """Whether the retention policies are applied after each backup (`retention.auto`)."""
    offsite: list[str] = field(default_factory=list)
    """The enabled destinations each backup copies to (`usb (folder /mnt/usb/capsule)`); empty: none."""


def serve(
    settings: Settings,
    request: Serve,
    open_front_door: Callable[[str, int], FrontDoor],
    started: Callable[[ServicePlan], None],
    stopped: Callable[[Stopped], None],
) -> None:
    """Run until SIGTERM or Ctrl-C; `started` hears the plan once everything runs, `stopped` how it
    ended. A step cut short at the end of the grace is recorded as interrupted and the process exits
    at once (its thread is not waited for: the log says where it stopped)."""
    from capsule.orchestrator.actors import build  # noqa: PLC0415 - the job runner loads slowly
    from capsule.orchestrator.alerts import Alerter  # noqa: PLC0415
    from capsule.orchestrator.jobrunner import signal_name  # noqa: PLC0415
    from capsule.orchestrator.retention import RetentionKeeper  # noqa: PLC0415
    from capsule.orchestrator.service import Service  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415
    from capsule.orchestrator.usecases.settings import machine_timezone  # noqa: PLC0415

    if request.scheduler_only and not settings.broker_url:
        raise NoBroker(
            "`capsule scheduler` runs the schedules alone, beside `capsule worker` processes, and needs "
            "CAPSULE_BROKER_URL; on one machine run `capsule serve`, which runs the jobs too"
        )
    with ExitStack() as stack:
        door = None
        if not request.scheduler_only or request.port is not None:  # the scheduler alone: with a port
            host = request.host or settings.http_host
            door = open_front_door(host, settings.http_port if request.port is None else request.port)
            stack.callback(door.close)
        open_repository(settings)  # no repository or no key: said now, not at the first backup
        if settings.nice and not request.scheduler_only:
            os.nice(settings.nice)  # the backups it runs leave the CPU to the shop's own programs
        runtime, dispatcher = build(settings)
        stack.callback(runtime.close)
        sources = {"database": settings.database.resolve(), "files": settings.uploads.resolve()}
        service = Service(
            runtime,
            dispatcher,
            sources=sources,
            machine_zone=machine_timezone(),
            embedded_worker=not settings.broker_url and not request.scheduler_only,
        )
        alerter = Alerter.of(runtime)
        service.add_ticker(alerter.tick)  # after the scheduler: it judges what ran
        service.add_ticker(RetentionKeeper(runtime).tick)
        try:  # a signal while it starts stops it the same way
            first = stack.enter_context(service.running())
            if door is not None:
                stack.enter_context(door.serving(service))
            started(_plan(service, door, first, request.grace_seconds, alerter))
            while True:
                time.sleep(3600)  # the signal handler raises here
        except KeyboardInterrupt as e:
            result = service.stop(signal_name(e), request.grace_seconds)
        if result.interrupted:
            stopped(result)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # a clean stop: what was cut short is in the log, and the next start finishes it
    stopped(result)


def _plan(
    service: Service, door: FrontDoor | None, first: list[FirstBackup], grace: float, alerter: Alerter
) -> ServicePlan:
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    from capsule.orchestrator.cron import upcoming  # noqa: PLC0415
    from capsule.orchestrator.service import current_settings  # noqa: PLC0415

    document = current_settings(service.runtime)
    zone = document.timezone or service.scheduler.machine_zone
    now = service.clock()
    schedules = []
    for name, schedule in document.schedules.items():
        due = upcoming(schedule.cron, ZoneInfo(zone), now, 1) if schedule.enabled else []
        schedules.append(PlannedSchedule(name, schedule.cron, schedule.enabled, due[0] if due else None))
    return ServicePlan(
        url=door.url if door is not None else None,
        worker="embedded" if service.embedded_worker else "broker",
        timezone=zone,
        schedules=schedules,
        first_backups=first,
        grace_seconds=grace,
        alert_targets=[f"{t.channel} {t.target}" for t in alerter.targets(document)],
        retention_auto=document.retention.auto,
        offsite=_offsite(service),
    )


def _offsite(service: Service) -> list[str]:
    from capsule.orchestrator.destinations import destinations_of, settings_events  # noqa: PLC0415

    found = destinations_of(settings_events(service.runtime)).by_name.values()
    return [f"{d.name} ({d.kind} {d.describe()})" for d in found if d.enabled]
