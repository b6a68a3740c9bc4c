"""How the settings commands show what their use cases returned."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from capsule.domain import settings as model

if TYPE_CHECKING:
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
        "settings": view.document.model_dump(mode="json"),
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
    for key in keys:
        value = model.value_of(view.document, key)
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
