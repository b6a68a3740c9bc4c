"""The scheduler: at each tick, start the run each schedule owes, once, whatever else is running.

A schedule's run at one due time is recorded as a `ScheduleFired` event in a stream of its own
(`schedule-<name>-<due time>`), appended at version 0 in the same transaction as the job it
requests (a backup, or for the `drill` schedule a restore drill). Two schedulers that see the same
due time both try; the log lets one in, and the other's transaction, its request included, leaves
nothing behind. So a run is started exactly once,
by whichever process gets there first, and a crash between deciding and recording loses nothing
that the next tick will not do again.

- After downtime, the runs missed are owed once: the newest due time, with how many were missed
  and how late it is (`orchestrator/cron.py`).
- A run due while the job of the schedule's last run is still going is folded into that job
  (`coalesced`), never stacked behind it.
- `jitter_seconds` delays a run by the same amount in every process.

The clock is given (`now`), so tests drive it; nothing here sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection

from capsule.domain.events import ScheduleFired
from capsule.domain.jobs import FINISHED
from capsule.domain.settings import SCHEDULED_JOBS, BackupSettings, Runs
from capsule.orchestrator import codec, projections
from capsule.orchestrator.cron import due_now, jitter
from capsule.orchestrator.errors import ConcurrencyConflict
from capsule.orchestrator.eventstore import Metadata
from capsule.orchestrator.runtime import Runtime

log = structlog.get_logger()
ACTOR = "system:scheduler"


@dataclass(frozen=True)
class Fired:
    """A run this scheduler recorded."""

    schedule: str
    due_at: datetime
    job_id: str
    coalesced: bool
    missed: int


@dataclass
class Scheduler:
    """Ticks against one event log; `sources` maps a snapshot kind (`database`, `files`) to the
    source its backups record and its drills prove."""

    runtime: Runtime
    sources: dict[str, str]
    machine_zone: str
    started_at: datetime
    """Where a schedule that never ran starts counting: it owes nothing that was due before."""
    _fired: list[Fired] = field(default_factory=list)

    def tick(self, now: datetime, settings: BackupSettings) -> list[Fired]:
        """Record and request every run owed at `now`; return those this call recorded."""
        zone = ZoneInfo(settings.timezone or self.machine_zone)
        last_runs = projections.last_schedule_runs(self.runtime.engine)
        fired = []
        for name, schedule in settings.schedules.items():
            if not schedule.enabled or name not in SCHEDULED_JOBS:
                continue
            last = last_runs.get(name)
            since = last["due_at"] if last is not None else self.started_at
            owed = due_now(schedule.cron, zone, since, now)
            if owed is None or now < owed.at + jitter(name, owed.at, schedule.jitter_seconds):
                continue
            run = self._fire(name, owed.at, owed.missed, (now - owed.at).total_seconds(), last)
            if run is not None:
                fired.append(run)
        return fired

    def _fire(
        self, name: str, due_at: datetime, missed: int, late: float, last: projections.Row | None
    ) -> Fired | None:
        runs = SCHEDULED_JOBS[name]
        stream = codec.schedule_stream_id(name, due_at)
        store = self.runtime.store
        try:
            with store.transaction() as conn:
                if store.stream_version(stream, conn=conn):
                    return None  # another scheduler recorded it first
                running = last["job_id"] if last is not None else None
                job = projections.get_job(conn, running) if running else None
                coalesced = job is not None and job["status"] not in FINISHED
                job_id = str(running) if coalesced else self._request(runs, conn, stream)
                event = ScheduleFired(
                    job_id=job_id,
                    schedule=name,
                    due_at=due_at,
                    missed=missed,
                    late_seconds=round(late, 3),
                    coalesced=coalesced,
                )
                store.append(
                    stream,
                    0,
                    [codec.encode(event)],
                    Metadata(actor=ACTOR, correlation_id=job_id),
                    handlers=[self.runtime.handler],
                    conn=conn,
                )
        except ConcurrencyConflict:
            return None  # on PostgreSQL the other scheduler's append won: nothing of ours was kept
        log.info(
            "schedule fired",
            schedule=name,
            due_at=due_at.isoformat(),
            job_id=job_id,
            coalesced=coalesced,
            missed=missed,
            late_seconds=round(late, 3),
        )
        return Fired(name, due_at, job_id, coalesced, missed)

    def _request(self, runs: Runs, conn: Connection, stream: str) -> str:
        if runs.job_type == "drill":
            return self.runtime.request_drill(
                database_source=self.sources["database"],
                files_source=self.sources["files"],
                actor=ACTOR,
                conn=conn,
                causation_id=stream,
            )
        assert runs.kind is not None
        return self.runtime.request_backup(
            source=self.sources[runs.kind],
            kind=runs.kind,
            full=runs.full,
            actor=ACTOR,
            conn=conn,
            causation_id=stream,
        )
