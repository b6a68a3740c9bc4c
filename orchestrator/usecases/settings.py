"""Use cases of the settings an admin changes while Capsule runs: show them, change one value.

The settings are an aggregate of their own (`domain/settings.py`): the `settings` stream of the
event log holds every change. A change is checked whole before it is recorded (a cron expression
croniter reads, a time zone that exists, a retention policy that keeps something), and recorded
only if nobody changed the settings since the version the change was made against: the API's
`If-Match` rests on that version. Each loads the event store when it runs (see the package's
docstring).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import JsonValue

from capsule.domain import settings as document
from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.orchestrator.runtime import Runtime


class SettingsChangedMeanwhile(CapsuleError):
    """The settings moved past the version a change was made against."""

    category = Category.REFUSED


@dataclass(frozen=True)
class SettingsView:
    """The whole document, the version it is at (0: never changed) and the last change."""

    document: document.BackupSettings
    version: int
    machine_timezone: str
    changed_at: datetime | None
    changed_by: str | None

    @property
    def timezone(self) -> str:
        """The zone schedules run in: the one set, else the machine's."""
        return self.document.timezone or self.machine_timezone


@dataclass(frozen=True)
class ChangeSetting:
    key: str
    value: str
    """As typed: parsed by the key's type."""
    expected_version: int | None = None
    """Refuse the change if the settings are no longer at this version; None: whatever they are at."""


@dataclass(frozen=True)
class SettingChanged:
    key: str
    old: JsonValue
    new: JsonValue
    version: int
    """The settings' version after the change (unchanged when the value was already that)."""


def machine_timezone() -> str:
    """The machine's own zone, as a tz database name where the system says which, else its abbreviation."""
    from pathlib import Path  # noqa: PLC0415

    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        return target.split("zoneinfo/", 1)[1]
    return "UTC" if time.tzname[0] in ("UTC", "GMT") else time.tzname[0]


def _runtime(settings: Settings) -> Runtime:
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    return Runtime(settings)


def _read(runtime: Runtime) -> tuple[document.BackupSettings, int]:
    from capsule.orchestrator import codec  # noqa: PLC0415

    values: dict[str, JsonValue] = {}
    stored = runtime.store.read_stream(codec.SETTINGS_STREAM)
    for row in stored:
        event = codec.decode(row)
        for change in getattr(event, "changes", ()):
            values[change.key] = change.new
    return document.from_values(values), (stored[-1].version if stored else 0)


def show(settings: Settings) -> SettingsView:
    """The settings as the `backup_settings` read model holds them."""
    import json  # noqa: PLC0415

    from capsule.orchestrator import projections  # noqa: PLC0415

    runtime = _runtime(settings)
    try:
        row = projections.settings_row(runtime.engine)
    finally:
        runtime.close()
    values = json.loads(row["changed_values"]) if row else {}
    return SettingsView(
        document=document.from_values(values),
        version=int(row["version"]) if row else 0,
        machine_timezone=machine_timezone(),
        changed_at=row["changed_at"] if row else None,
        changed_by=row["changed_by"] if row else None,
    )


def check(candidate: document.BackupSettings) -> None:
    """InvalidSetting (or InvalidSchedule) naming what is wrong with the whole document."""
    from capsule.orchestrator.cron import InvalidSchedule, check_cron, check_zone  # noqa: PLC0415

    if candidate.timezone is not None:
        try:
            check_zone(candidate.timezone)
        except InvalidSchedule as e:
            raise document.InvalidSetting(f"timezone: {e}") from e
    for name, schedule in candidate.schedules.items():
        try:
            check_cron(schedule.cron)
        except InvalidSchedule as e:
            raise document.InvalidSetting(f"schedules.{name}.cron: {e}") from e
    document.check_retention(candidate)
    document.check_alerts(candidate)


def change(settings: Settings, request: ChangeSetting, *, actor: str | None = None) -> SettingChanged:
    """Set one value; InvalidSetting for a wrong key or value, SettingsChangedMeanwhile if stale."""
    from capsule.domain.events import SettingChange, SettingsChanged  # noqa: PLC0415
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.errors import ConcurrencyConflict  # noqa: PLC0415
    from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415
    from capsule.orchestrator.runtime import new_job_id, person  # noqa: PLC0415

    request = replace(request, key=document.canonical_key(request.key))
    runtime = _runtime(settings)
    try:
        current, version = _read(runtime)
        if request.expected_version is not None and request.expected_version != version:
            raise SettingsChangedMeanwhile(_moved(request.expected_version, version))
        new = document.parse(current, request.key, request.value)
        if request.key.endswith(".cron") and isinstance(new, str):
            new = _one_cron(request.key, new)
        if request.key in document.SECRET_KEYS:
            new = _sealed(settings, request.key, new)
        if request.key in document.SEALED_ITEM_KEYS and isinstance(new, list):
            check(document.with_changes(current, {request.key: new}))  # in plain text, before sealing
            new = _sealed_items(settings, request.key, new)
        old = document.value_of(current, request.key)
        candidate = document.with_changes(current, {request.key: new})
        check(candidate)
        new = document.value_of(candidate, request.key)
        if new == old:
            return _result(request.key, old, new, version)
        change_id = new_job_id()
        event = SettingsChanged(job_id=change_id, changes=(SettingChange(key=request.key, old=old, new=new),))
        try:
            runtime.store.append(
                codec.SETTINGS_STREAM,
                version,
                [codec.encode(event)],
                Metadata(actor=actor or person(), correlation_id=change_id),
                handlers=[runtime.handler],
            )
        except ConcurrencyConflict as e:
            raise SettingsChangedMeanwhile(_moved(version, e.actual_version)) from e
        return _result(request.key, old, new, version + 1)
    finally:
        runtime.close()


def _sealed(settings: Settings, key: str, value: JsonValue) -> JsonValue:
    """A secret's value as the log may hold it: sealed, or None to remove it."""
    from capsule.orchestrator.secrets import box_in  # noqa: PLC0415

    if not isinstance(value, str) or not value:
        return None
    return box_in(settings.home).seal(key, value)


def _sealed_items(settings: Settings, key: str, items: list[JsonValue]) -> list[JsonValue]:
    """Each item as the log may hold it: its name (a webhook's address without its path) and the
    item sealed."""
    from capsule.adapters.notifiers import webhook_name  # noqa: PLC0415
    from capsule.orchestrator.secrets import box_in  # noqa: PLC0415

    box = box_in(settings.home)
    return [
        f"{webhook_name(item)} {box.seal(key, item)}" if isinstance(item, str) and item else item
        for item in items
    ]


def _result(key: str, old: JsonValue, new: JsonValue, version: int) -> SettingChanged:
    """What a change reports: a secret's values masked, as they are wherever values are printed."""
    return SettingChanged(key, document.shown_value(key, old), document.shown_value(key, new), version)


def _one_cron(key: str, expression: str) -> str:
    """The expression with single spaces; InvalidSetting naming the key and the field when it is wrong."""
    from capsule.orchestrator.cron import InvalidSchedule, check_cron  # noqa: PLC0415

    try:
        return check_cron(expression)
    except InvalidSchedule as e:
        raise document.InvalidSetting(f"{key}: {e}") from e


def _moved(expected: int, now: int | None) -> str:
    at = "a later version" if now is None else f"version {now}"
    return (
        f"the settings changed meanwhile: they are at {at}, not {expected}; "
        "run `capsule settings show` and make the change again"
    )
