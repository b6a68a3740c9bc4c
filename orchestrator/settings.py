"""Settings: environment variables (CAPSULE_*) over an optional capsule.toml over defaults.

Defaults are relative to the working directory, matching a point-of-sale server's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Where things are and how Capsule behaves."""

    model_config = SettingsConfigDict(env_prefix="CAPSULE_", toml_file="capsule.toml", extra="ignore")

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
    pack_size: int = Field(16 * MiB, ge=MiB, le=1024 * MiB)
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))
