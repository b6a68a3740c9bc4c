"""Use case: a restore drill run by hand, as a job: prove the newest snapshots restorable.

The drill restores the newest snapshot of the configured database into a scratch folder under
Capsule's home, verified as a restore is, runs SQLite's `integrity_check` and `foreign_key_check`
on the copy, restores a random sample of the newest images snapshot and checks each image against
its manifest, then deletes what it restored (see capsule.orchestrator.drillsteps). It fails when
there is nothing to prove or something does not restore; `JobFailed` says which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capsule.orchestrator.settings import Settings

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Drill:
    actor: str | None = None
    """Who asks; None: the person at this machine's terminal."""


@dataclass(frozen=True)
class Drilled:
    """What a drill proved, as its completion recorded it."""

    job_id: str
    database_snapshot_id: str
    files_snapshot_id: str
    integrity_check: str
    foreign_key_check: str
    foreign_key_rows: list[str]
    """The first rows that break a foreign key, if any (`table row N -> parent`)."""
    images_total: int
    images_sampled: int
    images_checked: int
    bytes: int
    seconds: float
    taken_at: dict[str, str] = field(default_factory=dict)
    """When each proven snapshot was taken (ISO 8601), by kind."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "database_snapshot_id": self.database_snapshot_id,
            "files_snapshot_id": self.files_snapshot_id,
            "database_taken_at": self.taken_at.get("database"),
            "files_taken_at": self.taken_at.get("files"),
            "integrity_check": self.integrity_check,
            "foreign_key_check": self.foreign_key_check,
            "foreign_key_rows": self.foreign_key_rows,
            "images_total": self.images_total,
            "images_sampled": self.images_sampled,
            "images_checked": self.images_checked,
            "bytes": self.bytes,
            "seconds": self.seconds,
        }


def drill_sources(settings: Settings) -> tuple[str, str]:
    """The database and the images folder a drill proves snapshots of: the configured ones."""
    return str(settings.database.resolve()), str(settings.uploads.resolve())


def run_drill(settings: Settings, request: Drill, progress: Progress | None = None) -> Drilled:
    """Run a restore drill and wait for it; raise `JobFailed` unless it proves both kinds."""
    from capsule.domain.drill_job import DrillJob, proven  # noqa: PLC0415 - the job runner loads slowly
    from capsule.orchestrator.jobrunner import run_job  # noqa: PLC0415
    from capsule.orchestrator.runtime import person  # noqa: PLC0415

    database, files = drill_sources(settings)
    loaded = run_job(
        settings,
        "drill",
        lambda rt: rt.request_drill(
            database_source=database, files_source=files, actor=request.actor or person()
        ),
        progress=progress,
    )
    state = loaded.state
    assert isinstance(state, DrillJob) and state.outcome is not None
    done = state.outcome
    results = proven(state)
    rows = (results.get("database", {}).get("warnings") or {}).get("items")  # type: ignore[union-attr]
    return Drilled(
        job_id=state.job_id,
        database_snapshot_id=done.database_snapshot_id,
        files_snapshot_id=done.files_snapshot_id,
        integrity_check=done.integrity_check,
        foreign_key_check=done.foreign_key_check,
        foreign_key_rows=[str(r) for r in rows] if isinstance(rows, list) else [],
        images_total=done.images_total,
        images_sampled=done.images_sampled,
        images_checked=done.images_checked,
        bytes=done.bytes,
        seconds=done.seconds,
        taken_at={kind: str(r["time"]) for kind, r in results.items() if isinstance(r.get("time"), str)},
    )
