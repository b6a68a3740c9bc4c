"""Between domain events and the log: type names, schema versions, JSON payloads and stream ids.

The event store knows no domain class and the domain knows no store; this module is the only place
where the two meet. When an event's shape changes, its class gets a new `schema_version` and the
upcaster that brings the old payload up to it is registered in `upcasters()` (defined in
`orchestrator/upcasters.py`), so rows written by older Capsules keep loading without ever being
rewritten.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from capsule.domain import backup_job, destinations, drill_job, prune_job, restore_job, settings
from capsule.domain.events import Event, event_payload, event_type, load_event
from capsule.orchestrator import upcasters as registry
from capsule.orchestrator.eventstore import NewEvent, StoredEvent, Upcasters

JobType = Literal["backup", "restore", "drill", "prune"]

_PREFIXES: dict[JobType, str] = {
    "backup": backup_job.STREAM_PREFIX,
    "restore": restore_job.STREAM_PREFIX,
    "drill": drill_job.STREAM_PREFIX,
    "prune": prune_job.STREAM_PREFIX,
}
SETTINGS_STREAM = settings.STREAM
"""The settings aggregate's one stream."""
SCHEDULE_STREAM_PREFIX = "schedule-"
"""The streams of schedules' runs: one per schedule and due time."""
LOG_STREAM_PREFIX = "eventlog-"
"""The streams of the event log's own history: one per repair that started a new log."""
SNAPSHOT_STREAM_PREFIX = "snapshot-"
"""The streams of snapshots after their backup (tags, forgetting): one per snapshot id."""
DESTINATION_STREAM_PREFIX = destinations.STREAM_PREFIX
"""The streams of what each destination holds and its upload sessions: one per destination added."""
ALERT_STREAM_PREFIX = "alert-"
"""The streams of alerts: one per incident key (`alert-overdue-database`), see `orchestrator/alerts.py`."""


def encode(event: Event) -> NewEvent:
    """The row to append for `event`: its type name, its class's schema version and its JSON payload."""
    version = type(event).schema_version
    return NewEvent(type=event_type(event), schema_version=version, data=event_payload(event))


def decode(stored: StoredEvent) -> Event:
    """The domain event of a row read from the log, which the store has already upcast."""
    return load_event(stored.type, stored.data, schema_version=stored.schema_version)


def upcasters() -> Upcasters:
    """A new registry of every upcaster the log's older rows need, for `EventStore(upcasters=...)`
    (they are registered in `capsule.orchestrator.upcasters`)."""
    return registry.upcasters()


def stream_id(job_type: JobType, job_id: str) -> str:
    """The stream that holds the events of job `job_id` of `job_type`."""
    return f"{_PREFIXES[job_type]}{job_id}"


def log_stream_id(repair_id: str) -> str:
    """The stream that holds the events of the repair `repair_id` of the event log."""
    return f"{LOG_STREAM_PREFIX}{repair_id}"


def schedule_stream_id(schedule: str, due_at: datetime) -> str:
    """The stream of `schedule`'s run at `due_at`: the one place that run can be recorded."""
    return f"{SCHEDULE_STREAM_PREFIX}{schedule}-{due_at.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def alert_stream_id(incident: str) -> str:
    """The stream where the incident `incident` (`overdue-database`) is raised, told and cleared."""
    return f"{ALERT_STREAM_PREFIX}{incident}"


def destination_stream_id(added_id: str) -> str:
    """The stream of the destination added by change `added_id`: the objects it holds, its uploads."""
    return f"{DESTINATION_STREAM_PREFIX}{added_id}"


def snapshot_stream_id(snapshot_id: str) -> str:
    """The stream where snapshot `snapshot_id` is tagged and forgotten."""
    return f"{SNAPSHOT_STREAM_PREFIX}{snapshot_id}"


def is_snapshot_stream(stream: str) -> bool:
    return stream.startswith(SNAPSHOT_STREAM_PREFIX) and len(stream) > len(SNAPSHOT_STREAM_PREFIX)


def is_alert_stream(stream: str) -> bool:
    return stream.startswith(ALERT_STREAM_PREFIX) and len(stream) > len(ALERT_STREAM_PREFIX)


def is_schedule_stream(stream: str) -> bool:
    return stream.startswith(SCHEDULE_STREAM_PREFIX)


def is_settings_stream(stream: str) -> bool:
    return stream == SETTINGS_STREAM


def is_log_stream(stream: str) -> bool:
    return stream.startswith(LOG_STREAM_PREFIX) and len(stream) > len(LOG_STREAM_PREFIX)


def job_of_stream(stream: str) -> tuple[JobType, str] | None:
    """(job type, job id) of a job's stream; None for a stream that holds no job."""
    for job_type, prefix in _PREFIXES.items():
        if stream.startswith(prefix) and len(stream) > len(prefix):
            return job_type, stream[len(prefix) :]
    return None


def is_destination_stream(stream: str) -> bool:
    return stream.startswith(DESTINATION_STREAM_PREFIX) and len(stream) > len(DESTINATION_STREAM_PREFIX)
