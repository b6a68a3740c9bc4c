"""Use cases of jobs and of the event log: list jobs, the status, the audit trail, the log's
check, replay and repair, and the worker that runs job steps.

`jobs` and `status` read the projections; `audit` reads the event log itself, the one record of
who did what and when; `replay` rebuilds the projections from the log. Each loads the event store
when it runs (see the package's docstring).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.orchestrator.eventstore import ChainReport, StoredEvent
    from capsule.orchestrator.logrepair import LogRepair
    from capsule.orchestrator.projections import ReplayReport
    from capsule.orchestrator.runtime import Runtime

Row = dict[str, Any]
AUDIT_BATCH = 5000
STATUS_RECENT_JOBS = 200
STATUS_FAILURES = 3
SNAPSHOT_KINDS = ("database", "files")


def _runtime(settings: Settings) -> Runtime:
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    return Runtime(settings)


@dataclass(frozen=True)
class ListJobs:
    limit: int = 20
    status: str | None = None


@dataclass(frozen=True)
class JobList:
    """Jobs, newest request first: each a row of the jobs projection (column to value)."""

    rows: list[Row]
    status: str | None = None
    """The status asked for, if any."""


def list_jobs(settings: Settings, request: ListJobs) -> JobList:
    from capsule.orchestrator import projections  # noqa: PLC0415

    runtime = _runtime(settings)
    try:
        rows = projections.list_jobs(runtime.engine, limit=request.limit, status=request.status)
        return JobList(rows, request.status)
    finally:
        runtime.close()


@dataclass(frozen=True)
class Status:
    """What Capsule is doing and when the last backup was made."""

    repository: Path
    database: Path
    last_snapshot: Row | None
    """The newest snapshot of either kind."""
    last_snapshots: dict[str, Row | None]
    """The newest snapshot of each kind: `database` and `files` (None: none yet)."""
    last_backup_warnings: dict[str, Any] | None
    """The warnings of the job that made the last snapshot: count, and the first few items."""
    active_jobs: list[Row]
    recent_failures: list[Row]
    event_log_position: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "database": str(self.database),
            "last_snapshot": self.last_snapshot,
            "last_snapshots": self.last_snapshots,
            "last_backup_warnings": self.last_backup_warnings,
            "active_jobs": self.active_jobs,
            "recent_failures": self.recent_failures,
            "event_log_position": self.event_log_position,
        }


def current_status(settings: Settings) -> Status:
    from capsule.orchestrator import projections  # noqa: PLC0415

    runtime = _runtime(settings)
    try:
        recent = projections.list_jobs(runtime.engine, limit=STATUS_RECENT_JOBS)
        snaps = projections.list_snapshots(runtime.engine, limit=1)
        by_kind = {kind: projections.list_snapshots(runtime.engine, 1, kind) for kind in SNAPSHOT_KINDS}
        position = runtime.store.last_position()
    finally:
        runtime.close()
    active = [r for r in recent if r.get("status") not in ("completed", "failed", "cancelled")]
    failed = [r for r in recent if r.get("status") == "failed"][:STATUS_FAILURES]
    last = snaps[0] if snaps else None
    return Status(
        repository=settings.repository,
        database=settings.database,
        last_snapshot=last,
        last_snapshots={kind: rows[0] if rows else None for kind, rows in by_kind.items()},
        last_backup_warnings=_last_backup_warnings(recent, last),
        active_jobs=active,
        recent_failures=failed,
        event_log_position=position,
    )


def _last_backup_warnings(jobs: list[Row], last: Row | None) -> dict[str, Any] | None:
    """The warnings of the job that made the last snapshot (count, and the first few), if it had any."""
    if last is None:
        return None
    for row in jobs:
        if row.get("job_id") == last.get("job_id") and row.get("warnings"):
            return {"count": row["warnings"], "items": str(row.get("warning_items") or "").splitlines()}
    return None


@dataclass(frozen=True)
class Audit:
    job_id: str | None = None
    """Only the events of this job."""
    since: datetime | None = None
    """Only events recorded at or after this time (aware)."""


@dataclass(frozen=True)
class AuditTrail:
    events: list[StoredEvent]


def audit_events(settings: Settings, request: Audit) -> AuditTrail:
    """The events of the log that pass the request, in the order they were recorded."""
    job_id, start = request.job_id, request.since
    runtime = _runtime(settings)
    rows = []
    try:
        after = 0
        while batch := runtime.store.read_all(after, limit=AUDIT_BATCH):
            after = batch[-1].position
            for e in batch:
                if job_id and e.metadata.correlation_id != job_id and not e.stream_id.endswith(f"-{job_id}"):
                    continue
                if start and e.recorded_at < start:
                    continue
                rows.append(e)
    finally:
        runtime.close()
    return AuditTrail(rows)


def verify_log(settings: Settings) -> ChainReport:
    """Check every event against its seal and the chain; `EventLogTampered` names the first miss."""
    runtime = _runtime(settings)
    try:
        return runtime.verify_log()
    finally:
        runtime.close()


def replay_log(settings: Settings) -> ReplayReport:
    """Rebuild the job and snapshot tables from the event log, from its first event."""
    from capsule.orchestrator import projections  # noqa: PLC0415

    runtime = _runtime(settings)
    try:
        return projections.replay(runtime.engine, runtime.store)
    finally:
        runtime.close()


def repair_event_log(settings: Settings, actor: str | None = None) -> LogRepair:
    """Set a damaged event log aside and start a new one; a log that reads whole is left alone.
    `actor` None: the person at this machine's terminal."""
    from capsule.orchestrator import logrepair  # noqa: PLC0415
    from capsule.orchestrator.runtime import person  # noqa: PLC0415

    return logrepair.repair_log(settings, actor=actor or person())


@dataclass(frozen=True)
class Work:
    threads: int = 2
    until_idle: bool = False
    """Return once no unfinished job is left."""


def work(settings: Settings, request: Work, started: Callable[[str], None]) -> None:
    """Run job steps (from CAPSULE_BROKER_URL, or the unfinished jobs of this machine) until SIGTERM,
    Ctrl-C or, with `until_idle`, no job is left; `started` hears the worker's id once it runs."""
    from capsule.orchestrator.actors import build  # noqa: PLC0415

    runtime, dispatcher = build(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with dispatcher.worker(request.threads, sweep_every=settings.sweep_seconds):
            started(runtime.worker_id)
            while not stop.wait(0.2):
                if request.until_idle and not runtime.unfinished():
                    break
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()
