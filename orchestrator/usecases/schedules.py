"""Use case: each schedule with its last run, that run's result and its next three due times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.settings import show


@dataclass(frozen=True)
class ScheduleView:
    name: str
    cron: str
    enabled: bool
    last_due_at: datetime | None
    last_job_id: str | None
    last_status: str | None
    """The status of the job the last run started or joined: `completed`, `failed`, `running`, ..."""
    late: bool
    next_due: list[datetime]


@dataclass(frozen=True)
class ScheduleList:
    timezone: str
    schedules: list[ScheduleView]


def list_schedules(settings: Settings, now: datetime | None = None) -> ScheduleList:
    from capsule.orchestrator import projections  # noqa: PLC0415
    from capsule.orchestrator.cron import upcoming  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    view = show(settings)
    zone = ZoneInfo(view.timezone)
    now = now or datetime.now(UTC)
    runtime = Runtime(settings)
    try:
        runs = projections.last_schedule_runs(runtime.engine)
        listed = []
        for name, schedule in view.document.schedules.items():
            run = runs.get(name)
            job = projections.get_job(runtime.engine, str(run["job_id"])) if run else None
            listed.append(
                ScheduleView(
                    name=name,
                    cron=schedule.cron,
                    enabled=schedule.enabled,
                    last_due_at=run["due_at"] if run else None,
                    last_job_id=str(run["job_id"]) if run else None,
                    last_status=str(job["status"]) if job else None,
                    late=bool(run and (run["missed"] > 1 or run["late_seconds"] > 60)),
                    next_due=upcoming(schedule.cron, zone, now) if schedule.enabled else [],
                )
            )
    finally:
        runtime.close()
    return ScheduleList(view.timezone, listed)
