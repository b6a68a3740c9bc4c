"""Settings: environment variables (CAPSULE_*) over an optional capsule.toml over defaults.

Defaults are relative to the working directory, matching a point-of-sale server's layout. The
three sources are merged here, with tomllib and a plain pydantic model: every setting is a single
value, and pydantic-settings, which reads nested ones, took longer to load than `capsule cat` takes
to find a file (see docs/performance.md). A variable's name is matched without regard to case. A
mistake in capsule.toml (a syntax error, a misspelled key, a value of the wrong kind) is refused
with the file, the line and, for an unknown key, the nearest known one: a key Capsule ignored
would leave the shop backed up with a setting its owner never chose.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from capsule.domain.sizes import DEFAULT_PACK_SIZE

MiB = 1024 * 1024
ENV_PREFIX = "CAPSULE_"
SETTINGS_FILE = "capsule.toml"


class SettingsInvalid(ValueError):
    """Raised when a CAPSULE_* variable or capsule.toml holds a setting Capsule cannot use; the
    message names the variable, or the file, the line and what to write instead."""


class Settings(BaseModel):
    """Where things are and how Capsule behaves: the values given, over the CAPSULE_* variables,
    over capsule.toml in the working folder, over the defaults."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_file(Path(SETTINGS_FILE)), **_from_environment(os.environ), **values})

    database: Path = Field(Path("data/pos.db"), description="the live point-of-sale database")
    uploads: Path = Field(Path("data/uploads/products"), description="product images")
    repository: Path = Field(Path("data/backups"), description="the local repository")
    home: Path = Field(Path("data/capsule"), description="Capsule's own state: key file, logs")
    key_file: Path | None = Field(None, description="default: <home>/repository.key")
    event_log_key_file: Path | None = Field(
        None,
        description="default: <home>/event-log.key; seals the event log; every process that appends needs it",
    )
    passphrase: SecretStr | None = None
    pack_size: int = Field(DEFAULT_PACK_SIZE, ge=MiB, le=1024 * MiB)
    lock_wait_seconds: float = Field(30.0, ge=0)
    workers: int | None = Field(
        None, ge=0, le=32, description="worker processes for sealing; 0 keeps all work in one process"
    )
    copy_in_memory: bool = Field(
        True, description="keep the backup's copy of the database in RAM (tmpfs) when it fits comfortably"
    )
    nice: int = Field(10, ge=0, le=19, description="CPU priority of backups: the till comes first")
    step_lease_seconds: float = Field(
        60.0, gt=0, description="a step not heard from for this long is presumed dead and run again"
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="how often a running step reports progress")
    step_time_limit_seconds: float = Field(6 * 3600.0, gt=0, description="longest a single step may run")
    step_max_attempts: int = Field(5, ge=1, le=100, description="tries of a step before its job fails")
    step_backoff_seconds: float = Field(2.0, gt=0, description="wait after a step's first failure")
    step_backoff_max_seconds: float = Field(60.0, gt=0, description="longest wait between tries")
    sweep_seconds: float = Field(30.0, gt=0, description="how often a worker looks for lost jobs")
    safety_copies: int = Field(
        3, ge=1, le=1000, description="safety copies of the live database kept after in-place restores"
    )
    drill_sample_files: int = Field(
        20, ge=1, le=100_000, description="images a restore drill restores and checks, at least"
    )
    drill_sample_percent: float = Field(
        2.0, ge=0, le=100, description="or this share of the images, when that is more"
    )
    upload_pause_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="how long uploads to a destination wait once it kept refusing them for its rate limit",
    )
    gdrive_chunk_bytes: int = Field(
        64 * MiB,
        ge=256 * 1024,
        multiple_of=256 * 1024,
        description=(
            "most bytes per request of a Drive upload (a pack up to it goes in one); a dropped "
            "connection resends at most one, and usually far less: Drive keeps what arrived"
        ),
    )
    gdrive_attempts: int = Field(
        8, ge=1, le=20, description="tries of a Drive request, with capped jittered backoff, before it fails"
    )
    http_host: str = Field("127.0.0.1", description="the address `capsule serve` answers HTTP on")
    http_port: int = Field(8000, ge=0, le=65535, description="its port; 0 picks a free one")
    event_store_url: str | None = None
    broker_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"

    @property
    def resolved_key_file(self) -> Path:
        return self.key_file or self.home / "repository.key"

    @property
    def resolved_event_log_key_file(self) -> Path:
        return self.event_log_key_file or self.home / "event-log.key"

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        if self.heartbeat_seconds * 2 > self.step_lease_seconds:
            raise ValueError(
                "CAPSULE_STEP_LEASE_SECONDS must be at least twice CAPSULE_HEARTBEAT_SECONDS, "
                "or a live step would be taken for dead"
            )
        return self

    @property
    def staging(self) -> Path:
        return self.home / "staging"

    @property
    def safety(self) -> Path:
        return self.home / "safety"

    @property
    def cache(self) -> Path:
        """The index cache (capsule.adapters.repository.indexcache): safe to delete at any time."""
        return self.home / "cache"


def _from_environment(environ: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """The settings the CAPSULE_* variables give, by setting name (`CAPSULE_PACK_SIZE`: `pack_size`)."""
    known = Settings.model_fields
    given = {name.lower(): value for name, value in environ.items()}
    prefix = ENV_PREFIX.lower()
    return {key: given[prefix + key] for key in known if prefix + key in given}


def _from_file(file_path: Path) -> dict[str, Any]:
    """capsule.toml's settings, refused with its line when it is not TOML or names a setting that
    does not exist; none when there is no such file."""
    if not file_path.is_file():
        return {}
    import tomllib  # noqa: PLC0415 - most shops keep their settings in the environment

    where = file_path.absolute()
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsInvalid(f"{where} cannot be read ({e}); fix it or remove it") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SettingsInvalid(f"{where}{_toml_position(str(e))}: {_toml_problem(str(e))}") from e
    known = Settings.model_fields
    for key in data:
        if key not in known:
            raise SettingsInvalid(
                f"{where}, line {line_of(text, key)}: `{key}` is not a setting; {_nearest(key)}"
            )
    return data


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _toml_position(message: str) -> str:
    found = _AT.search(message)
    return f", line {found.group(1)}, column {found.group(2)}" if found else ""


def _toml_problem(message: str) -> str:
    what = _AT.sub("", message).replace("(at end of document)", "at the end of the file").strip()
    return f"{what[:1].lower()}{what[1:]} (the file is not valid TOML: write `key = value`, text in quotes)"


def line_of(text: str, key: str) -> int:
    """The line of capsule.toml where `key` is set (or its table opens)."""
    quoted = re.escape(key)
    pattern = re.compile(rf"^\s*(\[+\s*)?([\"']?){quoted}\2\s*(=|\.|\])")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return 1


def _nearest(key: str) -> str:
    known = list(Settings.model_fields)
    spelled = key.lower().removeprefix(ENV_PREFIX.lower()).replace("-", "_")
    if spelled in known:
        return f"did you mean `{spelled}`?"
    close = difflib.get_close_matches(spelled, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return "the settings are " + ", ".join(f"`{k}`" for k in known)


MISSPELLED = 0.85
"""How alike a CAPSULE_* variable that is no setting must be to one that is, to be taken for a
misspelling of it; other CAPSULE_* variables (not settings) are left alone."""


def load_settings() -> Settings:
    """The settings of this process, or `SettingsInvalid` naming the variable or the line to fix."""
    _refuse_misspelled_variables(dict(os.environ))
    try:
        return Settings()
    except ValidationError as e:
        raise SettingsInvalid(_explain(e)) from e


def _refuse_misspelled_variables(environ: dict[str, str]) -> None:
    known = list(Settings.model_fields)
    for name in sorted(environ):
        key = name.removeprefix(ENV_PREFIX).lower()
        if not name.startswith(ENV_PREFIX) or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=MISSPELLED)
        if close:
            raise SettingsInvalid(
                f"{name} is not a setting; did you mean {ENV_PREFIX}{close[0].upper()}? (rename the "
                "variable and run the command again)"
            )


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:
        return f"{message}; fix the setting and run the command again"
    key = str(first["loc"][0])
    variable = ENV_PREFIX + key.upper()
    file = Path(SETTINGS_FILE)
    if variable not in os.environ and file.is_file():
        text = file.read_text(encoding="utf-8", errors="replace")
        return (
            f"{file.absolute()}, line {line_of(text, key)}: the setting `{key}` is invalid ({message}); "
            "fix it and run the command again"
        )
    return f"the setting {variable} is invalid ({message}); fix it and run the command again"
