"""What an admin changes while Capsule runs: schedules, the time zone, retention and alerts.

These settings are an aggregate of their own, kept as events in the `settings` stream: each change
is a `SettingsChanged` event that names every key it changed with its old and new value, and who
changed it. The document is the defaults below with every change applied in order; a value never
set follows the defaults of the Capsule that reads it.

What belongs to the machine instead (paths, the event log's URL, the broker, workers) stays in the
environment and `capsule.toml` (`orchestrator/settings.py`), read once when a command starts.

Keys are dotted paths into the document: `timezone`, `schedules.database.cron`,
`schedules.files.enabled`, `retention.database.keep-daily`, `alerts.email`. A value is given as
text, as a person types it, and parsed by the key's type. Retention keys written by earlier
versions with underscores (`retention.database.keep_daily`) are read as their hyphenated names.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from capsule.domain.errors import CapsuleError, Category

STREAM = "settings"
"""The one stream of the settings aggregate."""


class InvalidSetting(CapsuleError):
    """A key that does not exist or a value it cannot take; the message names the key."""

    category = Category.INVALID_SETTING


class Schedule(BaseModel):
    """When a kind of job runs by itself: a cron expression in the shop's time zone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str
    enabled: bool = True
    jitter_seconds: int = Field(0, ge=0, le=3600)
    """Up to this many seconds later than due, the same in every process: spreads many shops' runs."""


def _hyphenated(name: str) -> str:
    return name.replace("_", "-")


HYPHENATED = ConfigDict(
    frozen=True,
    extra="forbid",
    alias_generator=_hyphenated,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)
"""Models whose keys are typed and shown with hyphens (`keep-daily`), as restic's options are, and
read from their underscored names too (events of earlier versions)."""


class Retention(BaseModel):
    """Which snapshots of one kind to keep, in restic's vocabulary (see `domain/retention.py`).

    The defaults suit the default schedules (the database every hour and in full daily, the
    images weekly): the 3 newest whatever their age (a backup made by hand right after a bad
    change must not push out the one before it), one per hour for 2 days, per day for 2 weeks,
    per ISO week for 2 months, per month for a year, and per year for 3 years. Keys are written
    with hyphens (`keep-daily`), as restic's options are; the underscored names of earlier
    versions (`keep_daily`) are still understood.
    """

    model_config = HYPHENATED

    keep_last: int = 3
    keep_hourly: int = 48
    keep_daily: int = 14
    keep_weekly: int = 8
    keep_monthly: int = 12
    keep_yearly: int = 3
    keep_within: str | None = None
    """A duration as restic writes it (`2y5m7d3h`): every snapshot that much older than the newest."""
    keep_tag: tuple[str, ...] = ()
    """Tags whose snapshots are kept (a snapshot tagged `keep` is kept by every policy anyway)."""


class RetentionSettings(BaseModel):
    """A policy per kind, whether it is applied after each scheduled backup, and when `prune`
    repacks a pack instead of leaving its unused blobs in place."""

    model_config = HYPHENATED

    database: Retention = Retention()
    files: Retention = Retention()
    auto: bool = True
    """Apply the policies after each scheduled backup."""
    repack_unused_percent: int = Field(10, ge=0, le=100)
    """A pack whose unused share passes this percentage is repacked by `prune`; below it, the
    unused blobs stay until more of the pack is unused (repacking costs a download and an upload)."""

    def policy(self, kind: str) -> Retention:
        """The policy of `kind` (`database` or `files`)."""
        found = {"database": self.database, "files": self.files}.get(kind)
        if found is None:
            raise InvalidSetting(f"there is no retention policy for {kind!r}; the kinds: database, files")
        return found


_OLD_RETENTION_KEY = re.compile(r"^(retention\.(?:[a-z]+\.)?)(keep_[a-z]+|repack_unused_percent)$")


def canonical_key(key: str) -> str:
    """The key as this version spells it: `retention.database.keep_daily` (written by earlier
    versions, and still typed) is `retention.database.keep-daily`."""
    found = _OLD_RETENTION_KEY.match(key)
    return f"{found.group(1)}{_hyphenated(found.group(2))}" if found else key


class Smtp(BaseModel):
    """The mail server alerts are sent through."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None = None
    port: int = Field(587, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    """Stored sealed (`orchestrator/secrets.py`); never printed: see `SECRET_KEYS`."""
    sender: str | None = None
    """The From address; None: the username, else `capsule@<this machine>`."""
    starttls: bool = True
    """Upgrade the connection with STARTTLS before logging in (port 587); false for a local relay."""


class Alerts(BaseModel):
    """Who hears when a job or a drill fails or a kind is overdue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: tuple[str, ...] = ()
    webhook: tuple[str, ...] = ()
    smtp: Smtp = Smtp()


SECRET_KEYS = frozenset({"alerts.smtp.password"})
"""Keys whose values are secrets: sealed before they become an event, printed as `********`."""
SEALED_ITEM_KEYS = frozenset({"alerts.webhook"})
"""Keys whose list items are secrets with a public name: a webhook's address often holds its token.
Each item is kept as `<name> <sealed address>`; only the name (the address without its path) is
ever printed."""
SEALED_PREFIX = "sealed:v1:"
"""How a sealed value begins (`orchestrator/secrets.py` seals)."""
SECRET_SHOWN = "********"  # noqa: S105 (what is printed in place of a secret)


DEFAULT_SCHEDULES = {
    "database": Schedule(cron="0 * * * *"),
    "database-full": Schedule(cron="59 23 * * *"),
    "files": Schedule(cron="0 3 * * 0"),
    "drill": Schedule(cron="0 4 * * 0"),
}
"""The plan's: the database every hour and in full daily at 23:59, the images weekly on Sunday at
03:00, and a restore drill an hour after that, which proves the images just stored."""


@dataclass(frozen=True)
class Runs:
    """What a schedule requests when it is due: a backup of `kind` (`full` or not), or a drill."""

    job_type: Literal["backup", "drill"]
    kind: Literal["database", "files"] | None = None
    full: bool = False


SCHEDULED_JOBS: dict[str, Runs] = {
    "database": Runs("backup", "database"),
    "database-full": Runs("backup", "database", full=True),
    "files": Runs("backup", "files"),
    "drill": Runs("drill"),
}
"""What each schedule runs."""

SCHEDULED_BACKUPS: dict[str, tuple[Literal["database", "files"], bool]] = {
    name: (runs.kind, runs.full)
    for name, runs in SCHEDULED_JOBS.items()
    if runs.job_type == "backup" and runs.kind is not None
}
"""The schedules that run a backup: its kind, `--full` or not."""


class BackupSettings(BaseModel):
    """The whole settings document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str | None = None
    """A tz database name (`Europe/Madrid`); None: the machine's own."""
    schedules: dict[str, Schedule] = Field(default_factory=lambda: dict(DEFAULT_SCHEDULES))
    retention: RetentionSettings = RetentionSettings()
    alerts: Alerts = Alerts()


def keys(document: BackupSettings | None = None) -> list[str]:
    """Every key a value can be set at, in the document's order."""
    return list(_flatten((document or BackupSettings()).model_dump(mode="json")))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, JsonValue]:
    flat: dict[str, JsonValue] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def value_of(document: BackupSettings, key: str) -> JsonValue:
    """The value at `key`; InvalidSetting for a key that does not exist."""
    key = canonical_key(key)
    flat = _flatten(document.model_dump(mode="json"))
    if key not in flat:
        raise InvalidSetting(_unknown(key, list(flat)))
    return flat[key]


def _unknown(key: str, known: list[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean `{near[0]}`?" if near else "; `capsule settings show` lists every key"
    return f"there is no setting `{key}`{hint}"


def parse(document: BackupSettings, key: str, text: str) -> JsonValue:
    """The value `text` stands for at `key`, by the type of the value there now."""
    key = canonical_key(key)
    current = value_of(document, key)
    text = text.strip()
    if key == "timezone":
        return None if text.lower() in ("", "machine", "local") else text
    if key.endswith(".keep-within"):
        from capsule.domain.retention import parse_duration  # noqa: PLC0415 - it imports this module

        return None if text.lower() in ("", "none", "off") else str(parse_duration(text, key))
    if isinstance(current, bool):
        words = {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }
        if text.lower() not in words:
            raise InvalidSetting(f"{key}: `{text}` is not true or false")
        return words[text.lower()]
    if isinstance(current, int):
        if not re.fullmatch(r"-?\d+", text):
            raise InvalidSetting(f"{key}: `{text}` is not a whole number")
        return int(text)
    if isinstance(current, list):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def with_changes(document: BackupSettings, changes: dict[str, JsonValue]) -> BackupSettings:
    """The document with each key set to its new value; InvalidSetting names the first wrong one."""
    data = document.model_dump(mode="json")
    for spelled, value in changes.items():
        key = canonical_key(spelled)
        value_of(document, key)  # the key exists
        *path, last = key.split(".")
        place = data
        for part in path:
            place = place[part]
        place[last] = value
    try:
        return BackupSettings.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidSetting(f"{where}: {first['msg'].lower()}") from e


def check_retention(document: BackupSettings) -> None:
    """InvalidSetting naming the key when a retention policy cannot be applied: a negative count,
    a duration that is none, or a policy that would keep no snapshot at all."""
    from capsule.domain.retention import check_policy  # noqa: PLC0415 - it imports this module

    for kind in ("database", "files"):
        check_policy(document.retention.policy(kind), f"retention.{kind}")


def check_alerts(document: BackupSettings) -> None:
    """InvalidSetting when an alert target cannot be one: a webhook that is no http(s) address, an
    e-mail address without `@`."""
    for url in document.alerts.webhook:
        if sealed_item(url) is not None:
            continue  # checked before it was sealed
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise InvalidSetting(
                f"alerts.webhook: `{url}` is not an http:// or https:// address "
                "(for example https://hooks.example.com/capsule)"
            )
    for address in document.alerts.email:
        if not re.fullmatch(r"[^\s@]+@[^\s@]+", address):
            raise InvalidSetting(f"alerts.email: `{address}` is not an e-mail address (name@example.com)")


def sealed_item(item: str) -> tuple[str, str] | None:
    """(name, sealed value) of an item of a `SEALED_ITEM_KEYS` list; None for one kept in plain text."""
    name, _, sealed = item.rpartition(" ")
    return (name, sealed) if name and sealed.startswith(SEALED_PREFIX) else None


def shown_value(key: str, value: JsonValue) -> JsonValue:
    """`value` at `key` as it may be printed: a secret that is set as `********`, a sealed item as
    its name."""
    if key in SEALED_ITEM_KEYS and isinstance(value, list):
        return [(sealed_item(v) or (v, ""))[0] if isinstance(v, str) else v for v in value]
    return SECRET_SHOWN if key in SECRET_KEYS and value not in (None, "") else value


def masked(document: BackupSettings) -> BackupSettings:
    """The document as it may be printed: every secret that is set as `********`, every sealed
    item as its name."""
    keys = SECRET_KEYS | SEALED_ITEM_KEYS
    return with_changes(document, {key: shown_value(key, value_of(document, key)) for key in keys})


def from_values(values: dict[str, JsonValue]) -> BackupSettings:
    """The document with the values set so far (by key) over the defaults.

    A key this Capsule does not know, or a value it no longer accepts (both written by another
    version), is passed over, so that a log always loads.
    """
    document = BackupSettings()
    for key, value in values.items():
        try:
            document = with_changes(document, {canonical_key(key): value})
        except InvalidSetting:
            continue
    return document
