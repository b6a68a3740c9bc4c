"""How the settings commands show what their use cases returned."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import click

from capsule.domain import settings as model

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.schedules import ScheduleList
    from capsule.orchestrator.usecases.settings import SettingChanged, SettingsView


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def document_json(view: SettingsView) -> dict[str, object]:
    return {
        "version": view.version,
        "timezone": view.timezone,
        "settings": model.masked(view.document).model_dump(mode="json"),
        "changed_at": view.changed_at.isoformat().replace("+00:00", "Z") if view.changed_at else None,
        "changed_by": view.changed_by,
    }


def shown(view: SettingsView, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(document_json(view), indent=2))
        return
    defaults = model.BackupSettings()
    keys = model.keys(view.document)
    width = max(len(k) for k in keys)
    masked = model.masked(view.document)
    for key in keys:
        value = model.value_of(masked, key)
        note = "" if value != model.value_of(defaults, key) else "  (default)"
        if key == "timezone" and value is None:
            value, note = view.machine_timezone, "  (the machine's)"
        click.echo(f"{key:<{width}}  {_text(value)}{note}")
    when = (
        f", last changed {view.changed_at:%Y-%m-%d %H:%M} UTC by {view.changed_by}" if view.changed_at else ""
    )
    click.echo(f"Version {view.version}{when}.")


def changed(result: SettingChanged, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps({"key": result.key, "old": result.old, "new": result.new, "version": result.version})
        )
        return
    if result.old == result.new:
        click.echo(
            f"{result.key} is already {_text(result.new)}; nothing changed (version {result.version})."
        )
        return
    click.echo(f"{result.key}: {_text(result.old)} -> {_text(result.new)} (version {result.version}).")


def _utc(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


def schedules(listing: ScheduleList, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "name": s.name,
                "cron": s.cron,
                "enabled": s.enabled,
                "last_due_at": _utc(s.last_due_at),
                "last_job_id": s.last_job_id,
                "last_status": s.last_status,
                "late": s.late,
                "next_due": [_utc(t) for t in s.next_due],
            }
            for s in listing.schedules
        ]
        click.echo(json.dumps({"timezone": listing.timezone, "schedules": rows}, indent=2))
        return
    zone = ZoneInfo(listing.timezone)

    def local(t: datetime) -> str:
        return f"{t.astimezone(zone):%a %Y-%m-%d %H:%M}"

    click.echo(f"Times in {listing.timezone}.")
    for s in listing.schedules:
        state = "" if s.enabled else " (disabled)"
        click.echo(f"{s.name}: `{s.cron}`{state}")
        if s.last_due_at is None:
            click.echo("  last run: none yet")
        else:
            late = ", started late" if s.late else ""
            click.echo(f"  last run: due {local(s.last_due_at)}{late}; job {s.last_job_id} {s.last_status}")
        if s.next_due:
            click.echo("  next: " + "; ".join(local(t) for t in s.next_due))
