"""How `capsule serve` and `capsule scheduler` say what they do, and how they stopped.

Times are the shop's wall clock (the `timezone` setting, else the machine's), as `capsule
schedules` shows them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import click

if TYPE_CHECKING:
    from capsule.orchestrator.service import Stopped
    from capsule.orchestrator.usecases.serve import ServicePlan

KIND_NAMES = {"database": "the database", "files": "the images"}


def started(plan: ServicePlan) -> None:
    """What runs, what is backed up now and when each schedule runs next."""
    parts = ["the scheduler"]
    if plan.worker == "embedded":
        parts.append("the worker")
    if plan.url is not None:
        parts.append(f"HTTP at {plan.url} (GET /healthz)")
    click.echo(f"Capsule is running {', '.join(parts)}.")
    if plan.worker != "embedded":
        click.echo("Jobs run in `capsule worker` processes (CAPSULE_BROKER_URL).")
    for first in plan.first_backups:
        name = KIND_NAMES.get(first.kind, first.kind)
        if first.missing:
            click.echo(f"Not backing up {name}: {first.source} does not exist.")
        else:
            click.echo(f"Backing up {name} now, as it has no snapshot yet (job {first.job_id}).")
    zone = ZoneInfo(plan.timezone)
    click.echo(f"Schedules, in {plan.timezone}:")
    width = max((len(s.name) for s in plan.schedules), default=0)
    crons = max((len(s.cron) for s in plan.schedules), default=0)
    for s in plan.schedules:
        when = f"next {s.next_due.astimezone(zone):%a %Y-%m-%d %H:%M}" if s.next_due else "disabled"
        click.echo(f"  {s.name:<{width}}  {s.cron:<{crons}}  {when}")
    if plan.alert_targets:
        click.echo(f"Alerts go to: {'; '.join(plan.alert_targets)}.")
    else:
        click.echo(
            "No alert target is set: nobody is told when a backup fails or falls behind "
            "(`capsule settings set alerts.email ...`, guide section 17.2)."
        )
    if plan.offsite:
        click.echo(f"After each backup, copies go to {'; '.join(plan.offsite)}.")
    else:
        click.echo(
            "No off-site copy: the backups stay on this machine, and a fire or a dead disk takes them with "
            "the shop's data (`capsule destinations add folder|gdrive ...`, guide section 20)."
        )
    if plan.retention_auto:
        click.echo(
            "After each backup the retention policies forget old snapshots, and a prune gives the space "
            "back once a day (guide section 18)."
        )
    else:
        click.echo("Retention is off (retention.auto): no snapshot is forgotten by itself.")
    click.echo(f"Ctrl-C or SIGTERM stops it; a running step gets {plan.grace_seconds:g} s to end.")


def ended(result: Stopped) -> None:
    if not result.interrupted:
        click.echo(f"Stopped ({result.signal}); no step was cut short.")
        return
    jobs = ", ".join(result.interrupted)
    verb, them = ("is", "it") if len(result.interrupted) == 1 else ("are", "them")
    click.echo(
        f"Stopped ({result.signal}); {jobs} still ran after {result.grace_seconds:g} s and {verb} recorded "
        f"as interrupted: the next `capsule serve` or `capsule worker` finishes {them}."
    )
