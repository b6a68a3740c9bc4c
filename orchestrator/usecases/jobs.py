"""Use cases of jobs and of the event log: list jobs, the status, cancel a job, the audit trail,
the log's check, replay and repair, and the worker that runs job steps.

`jobs` and `status` read the projections (with `sqlite3` alone where that answers the same,
`capsule.orchestrator.reads`); `audit` reads the event log itself, the one record of
who did what and when; `replay` rebuilds the projections from the log. Each loads the event store
when it runs (see the package's docstring).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.domain.staleness import Freshness, Incident
    from capsule.orchestrator.eventstore import ChainReport, StoredEvent
    from capsule.orchestrator.health import OffsiteCopy
    from capsule.orchestrator.logrepair import LogRepair
    from capsule.orchestrator.projections import ReplayReport
    from capsule.orchestrator.reads import Reads
    from capsule.orchestrator.runtime import Runtime
    from capsule.orchestrator.usecases.prune import PruneStatus

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
    """As `current_status` reads: with `sqlite3` alone where that gives the same rows."""
    from capsule.orchestrator.reads import NotReadable, open_sqlite_reads  # noqa: PLC0415

    quick = open_sqlite_reads(settings)
    if quick is not None:
        try:
            return JobList(quick.list_jobs(limit=request.limit, status=request.status), request.status)
        except NotReadable:
            pass  # the event store reads it, or says what is wrong
        finally:
            quick.close()
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
    proven: dict[str, Row | None] = field(default_factory=dict)
    """Per kind, the last snapshot a restore drill proved restorable (`snapshot_id`, `taken_at`,
    `job_id` of the drill, `proven_at`); None: no drill has proved one yet."""
    last_drill: Row | None = None
    """The newest restore drill's job, whatever its outcome; None before the first."""
    freshness: list[Freshness] = field(default_factory=list)
    """How old each kind's last good backup is, against its tightest enabled schedule."""
    problems: list[Incident] = field(default_factory=list)
    """What `status --check` reports: overdue kinds, failed last backups, a failed last drill."""
    space: PruneStatus | None = None
    """The repository's size, its unused bytes as the last prune's plan measured them, the last prune."""
    offsite: list[OffsiteCopy] = field(default_factory=list)
    """Every destination and when its copy last held everything; empty: the backups are here only."""

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
            "proven": self.proven,
            "last_drill": self.last_drill,
            "space": self.space.as_dict() if self.space is not None else None,
            "offsite": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "location": c.location,
                    "enabled": c.enabled,
                    "last_whole_copy_at": c.last_whole_copy_at,
                }
                for c in self.offsite
            ],
            "freshness": [
                {
                    "kind": f.kind,
                    "schedule": f.schedule,
                    "every": f.every,
                    "period_seconds": f.period.total_seconds(),
                    "allowed_seconds": f.allowed.total_seconds(),
                    "last_good_at": f.last_good_at,
                    "age_seconds": round(f.age.total_seconds()),
                    "overdue": f.overdue,
                }
                for f in self.freshness
            ],
            "problems": [
                {
                    "incident": p.key,
                    "reason": p.reason,
                    "subject": p.subject,
                    "line": p.line,
                    "job_id": p.cause_job_id,
                }
                for p in self.problems
            ],
        }


def current_status(settings: Settings, now: datetime | None = None) -> Status:
    """On the default SQLite event log, read with `sqlite3` alone where that gives the same answer
    (see `capsule.orchestrator.reads`); otherwise, and for PostgreSQL, through the event store."""
    from capsule.orchestrator.reads import EngineReads, NotReadable, open_sqlite_reads  # noqa: PLC0415

    quick = open_sqlite_reads(settings)
    if quick is not None:
        try:
            return _status(settings, quick, now or datetime.now(UTC))
        except NotReadable:
            pass  # the event store reads it, or says what is wrong
        finally:
            quick.close()
    runtime = _runtime(settings)
    try:
        return _status(settings, EngineReads(runtime.engine, runtime.store), now or runtime.clock())
    finally:
        runtime.close()


def _status(settings: Settings, reads: Reads, now: datetime) -> Status:
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    from capsule.orchestrator import health  # noqa: PLC0415
    from capsule.orchestrator.usecases.prune import prune_status  # noqa: PLC0415
    from capsule.orchestrator.usecases.settings import machine_timezone  # noqa: PLC0415

    recent = reads.list_jobs(limit=STATUS_RECENT_JOBS)
    snaps = reads.list_snapshots(limit=1)
    by_kind = {kind: reads.list_snapshots(1, kind) for kind in SNAPSHOT_KINDS}
    position = reads.last_position()
    proofs = reads.proven_snapshots()
    drills = reads.list_jobs(limit=1, job_type="drill")
    document = health.settings_document_of(reads)
    zone = ZoneInfo(document.timezone or machine_timezone())
    seen = health.observe_reads(reads, document, zone, now)
    space = prune_status(settings, reads)
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
        proven={kind: proofs.get(kind) for kind in SNAPSHOT_KINDS},
        last_drill=drills[0] if drills else None,
        freshness=seen.freshness,
        problems=seen.incidents,
        space=space,
        offsite=health.offsite_copies(reads),
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
class Cancel:
    job_id: str
    actor: str | None = None
    """Who asks; None: the person at this machine's terminal."""


@dataclass(frozen=True)
class Cancelled:
    """A job that was cancelled, the status it had before, and the queued backups it let go."""

    job_id: str
    job_type: str
    was: str
    released: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "status": "cancelled",
            "was": self.was,
            "released": self.released,
        }


def cancel_job(settings: Settings, request: Cancel) -> Cancelled:
    """Cancel a job that has not finished: nothing more of it runs. A step running in a live
    process stops at its next report and releases its locks there; a restore's staged copy and
    the temporary files of processes that are gone are removed here; backups queued behind the
    job are let go. A finished job is refused (`InvalidCommand`), an unknown one not found."""
    from capsule.adapters.files.restore import remove_partial_writes  # noqa: PLC0415
    from capsule.domain.commands import CancelJob  # noqa: PLC0415
    from capsule.domain.errors import InvalidCommand  # noqa: PLC0415
    from capsule.domain.jobs import FINISHED  # noqa: PLC0415
    from capsule.domain.restore_job import IN_PLACE  # noqa: PLC0415
    from capsule.orchestrator.runtime import person  # noqa: PLC0415
    from capsule.orchestrator.steps import clean_up  # noqa: PLC0415

    runtime = _runtime(settings)
    try:
        job_type = runtime.job_type_of(request.job_id)
        state: Any = runtime.load(job_type, request.job_id).state
        if state.status in FINISHED:
            raise InvalidCommand(
                f"{job_type} job {request.job_id} is already {state.status}; there is nothing to cancel"
            )
        runtime.execute(
            job_type,
            request.job_id,
            lambda _: CancelJob(job_id=request.job_id, now=runtime.clock()),
            actor=request.actor or person(),
        )
        released: list[str] = []
        if job_type == "backup":
            released = runtime.release_queued(str(state.source))
        elif job_type == "drill":
            pass  # its running step deletes its scratch copy when it stops; a dead one's, the next drill
        elif job_type == "prune":
            pass  # it deletes nothing before its grace period; packs it copied, the next prune finds
        else:
            clean_up(settings, request.job_id)
            if state.target != IN_PLACE:
                remove_partial_writes(Path(state.target), owner="gone")
        return Cancelled(request.job_id, job_type, str(state.status), released)
    finally:
        runtime.close()


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
        while batch := runtime.store.read_all(after, limit=AUDIT_BATCH, since=start, of_job=job_id or None):
            after = batch[-1].position
            for e in batch:  # the query chose them; the same tests again, as before it did
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


@dataclass(frozen=True)
class WorkDone:
    """What one worker did while it ran, read from the events it appended."""

    worker_id: str
    jobs_completed: int = 0
    jobs_failed: int = 0
    steps_completed: int = 0
    steps_failed: int = 0
    """Failed attempts, those retried since included."""


JOB_ENDS = {
    "BackupCompleted": "jobs_completed",
    "RestoreCompleted": "jobs_completed",
    "BackupFailed": "jobs_failed",
    "RestoreFailed": "jobs_failed",
    "DrillCompleted": "jobs_completed",
    "DrillFailed": "jobs_failed",
    "PruneCompleted": "jobs_completed",
    "PruneFailed": "jobs_failed",
}
STEP_ENDS = {"StepCompleted": "steps_completed", "StepFailed": "steps_failed"}


@dataclass(frozen=True)
class WorkInterrupted:
    """A worker stopped by Ctrl-C or SIGTERM: the jobs whose running step it recorded as interrupted."""

    signal: str
    paused: list[str]
    """`<type> job <id>` of each."""


def work(
    settings: Settings,
    request: Work,
    started: Callable[[str], None],
    interrupted: Callable[[WorkInterrupted], None],
) -> WorkDone:
    """Run job steps (from CAPSULE_BROKER_URL, or the unfinished jobs of this machine) until
    Ctrl-C, SIGTERM or, with `until_idle`, no job is left; `started` hears the worker's id once it
    runs. On Ctrl-C or SIGTERM the steps it runs are recorded as interrupted (the next worker or
    backup goes on with them at once), its repository locks removed, `interrupted` told, and the
    process exits 130 at once: waiting for a step to end could take hours."""
    from capsule.adapters.partials import stop_partials  # noqa: PLC0415
    from capsule.orchestrator.actors import build  # noqa: PLC0415
    from capsule.orchestrator.jobrunner import interrupt_own_steps, signal_name  # noqa: PLC0415
    from capsule.orchestrator.steps import release_own_locks  # noqa: PLC0415

    runtime, dispatcher = build(settings)
    stop = threading.Event()
    try:
        since = runtime.store.last_position()
        with dispatcher.worker(request.threads, sweep_every=settings.sweep_seconds):
            started(runtime.worker_id)
            try:
                while not stop.wait(0.2):
                    if request.until_idle and not runtime.unfinished():
                        break
            except KeyboardInterrupt as e:
                name = signal_name(e)
                dispatcher.stop_starting()  # no attempt starts after the ones recorded below
                paused = interrupt_own_steps(runtime, name)
                stop_partials()  # the next attempt would remove them: no need to wait for it
                release_own_locks(settings, exiting=True)
                interrupted(WorkInterrupted(name, paused))
                os._exit(130)  # the steps' threads are not waited for: the log says where they stopped
        return _work_done(runtime, since)
    finally:
        runtime.close()


def _work_done(runtime: Runtime, since: int) -> WorkDone:
    from capsule.orchestrator.runtime import SYSTEM  # noqa: PLC0415

    actor = f"{SYSTEM}:worker:{runtime.worker_id}"
    counts = dict.fromkeys(("jobs_completed", "jobs_failed", "steps_completed", "steps_failed"), 0)
    while batch := runtime.store.read_all(since, AUDIT_BATCH):
        since = batch[-1].position
        for event in batch:
            field = JOB_ENDS.get(event.type) or STEP_ENDS.get(event.type)
            if field and event.metadata.actor == actor:
                counts[field] += 1
    return WorkDone(runtime.worker_id, **counts)
