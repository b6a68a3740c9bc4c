"""The read models' rows as pure functions of what came before, one event and the job it left.

Every function here takes the row as it stood (None before the job's first event), the event, where
and when the log recorded it, and the domain's state of the job once the event has been applied
(`evolve`). Status, step, attempt and progress are read from that state, so a row can never
disagree with what the deciders see; the row adds only what the state forgets: when things
happened and who asked. The live handler and `replay` both fold through these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from capsule.domain.backup_job import BackupJob, committed_snapshot_id, is_commit
from capsule.domain.drill_job import PLAN as DRILL_PLAN
from capsule.domain.drill_job import DrillJob, kind_of
from capsule.domain.events import (
    DestinationObject,
    DestinationObjectsDeleted,
    DestinationObjectsListed,
    DestinationObjectsUploaded,
    Event,
    JsonObject,
    ScheduleFired,
    SettingsChanged,
    SnapshotForgotten,
    SnapshotRecovered,
    SnapshotTagsChanged,
    StepCompleted,
    StepStarted,
)
from capsule.domain.jobs import JobState, current_step, is_finished
from capsule.domain.prune_job import PruneJob
from capsule.domain.restore_job import RestoreJob
from capsule.orchestrator.eventstore import StoredEvent

Row = dict[str, Any]

TOTALS = ("files", "bytes", "blobs", "new_blobs", "new_bytes", "stored_bytes")


@dataclass(frozen=True, slots=True)
class EventMeta:
    """Where and when the log recorded an event, and who caused it."""

    position: int
    recorded_at: datetime
    actor: str
    correlation_id: str

    @classmethod
    def of(cls, stored: StoredEvent) -> EventMeta:
        return cls(
            position=stored.position,
            recorded_at=stored.recorded_at,
            actor=stored.metadata.actor,
            correlation_id=stored.metadata.correlation_id,
        )


PRUNE_SOURCE = "repository"
"""The `source` of a prune's jobs row: it works on the whole repository, not on one source."""


def fold_job(row: Row | None, event: Event, meta: EventMeta, state: JobState) -> Row:
    """The `jobs` row of a backup or restore job once `event`, which left it in `state`, is applied."""
    step = current_step(state)
    progress = step.progress if step is not None else None
    if isinstance(state, BackupJob):
        job_type, kind, source = "backup", state.kind, state.source
        snapshot_id = state.snapshot_id or committed_snapshot_id(state)
    elif isinstance(state, RestoreJob):
        job_type, kind, source, snapshot_id = "restore", None, state.target, state.snapshot_id
    elif isinstance(state, DrillJob):
        # As for a backup of kind `all`: the database, then the folder; the first snapshot proven.
        job_type, kind, source = "drill", None, "\n".join(state.sources)
        snapshot_id = _first_proven(state)
    elif isinstance(state, PruneJob):
        job_type, kind, source, snapshot_id = "prune", None, PRUNE_SOURCE, None
    else:
        raise TypeError(f"no jobs row for a {type(state).__name__}")
    first = _first(row, meta)
    return {
        "job_id": state.job_id,
        "job_type": job_type,
        "kind": kind,
        "source": source,
        "snapshot_id": snapshot_id,
        "status": state.status,
        "current_step": step.name if step is not None else None,
        "attempt": step.attempt if step is not None else None,
        "progress_done": _count(progress.done) if progress is not None else None,
        "progress_total": _count(progress.total) if progress is not None else None,
        "queued_behind": state.queued_behind,
        "requested_at": first["requested_at"],
        "started_at": _first_time(row, "started_at", meta, isinstance(event, StepStarted)),
        "finished_at": _first_time(row, "finished_at", meta, is_finished(state)),
        "error": state.failure,
        "warnings": _warning_count(state),
        "warning_items": _warning_items(state),
        "actor": first["actor"],
        "correlation_id": first["correlation_id"],
        "last_position": meta.position,
        "updated_at": meta.recorded_at,
    }


def fold_restore_job(row: Row | None, event: Event, meta: EventMeta, state: RestoreJob) -> Row:
    """The `restore_jobs` row once `event`, which left the restore job in `state`, is applied."""
    result = state.result or {}
    return {
        "job_id": state.job_id,
        "snapshot_id": state.snapshot_id,
        "target": state.target,
        "force": state.force,
        "check": state.check,
        "status": state.status,
        "files": _count(result.get("files")),
        "bytes": _count(result.get("bytes")),
        "safety_copy": _safety_copy(state),
        "requested_at": _first(row, meta)["requested_at"],
        "finished_at": _first_time(row, "finished_at", meta, is_finished(state)),
        "error": state.failure,
    }


def snapshot_key(event: Event) -> str | None:
    """The snapshot whose `snapshots` row `event` writes: only a backup's commit step writes one."""
    if isinstance(event, StepCompleted) and is_commit(event.step):
        snapshot_id = event.result.get("snapshot_id")
        return snapshot_id if isinstance(snapshot_id, str) and snapshot_id else None
    return None


def fold_snapshot(row: Row | None, event: Event, meta: EventMeta, state: BackupJob) -> Row | None:
    """The `snapshots` row once `event` is applied: the commit step's result makes it, whole.

    The row exists from the commit on, also if a later step (an upload) fails: the snapshot is in
    the repository either way. BackupCompleted names the snapshot the domain took from that same
    result, so it writes nothing; a row never depends on the one before it, and with two commits
    naming one snapshot the later one wins.
    """
    key = snapshot_key(event)
    if key is None or not isinstance(event, StepCompleted):
        return row
    return _snapshot_row(key, event.result, meta.recorded_at, state)


def recovered_snapshot_row(event: SnapshotRecovered) -> Row:
    """The `snapshots` row of a snapshot that a new event log found in the repository.

    Its time is the manifest's, as the log that recorded its commit is gone; its job is the backup
    that wrote it, when the manifest names one, else the repair.
    """
    totals = event.totals
    return {
        "snapshot_id": event.snapshot_id,
        "job_id": event.made_by_job or event.job_id,
        "kind": event.kind,
        "source": event.source,
        "time": event.time,
        **{name: _count(totals.get(name)) for name in TOTALS},
        "duration_seconds": _seconds(totals.get("duration_seconds")),
    }


def _manifest_time(result: JsonObject) -> datetime | None:
    """The snapshot's own time, as its manifest says, if the commit's result names it (results
    recorded before it did are dated by their event)."""
    time = result.get("time")
    try:
        return datetime.fromisoformat(time) if isinstance(time, str) else None
    except ValueError:
        return None


def _snapshot_row(snapshot_id: str, result: JsonObject, time: datetime, state: BackupJob) -> Row:
    """`time`: when the commit was recorded, for a result that does not name the manifest's."""
    raw = result.get("totals")
    totals = raw if isinstance(raw, dict) else {}
    # A backup of kind `all` commits two snapshots; each commit's result names its own kind and source.
    kind, source = result.get("kind"), result.get("source")
    return {
        "snapshot_id": snapshot_id,
        "job_id": state.job_id,
        "kind": kind if isinstance(kind, str) else state.kind,
        "source": source if isinstance(source, str) else state.source,
        "time": _manifest_time(result) or time,
        **{name: _count(totals.get(name)) for name in TOTALS},
        "duration_seconds": _seconds(totals.get("duration_seconds")),
    }


def _warning_count(state: JobState) -> int | None:
    """How many items the job's steps skipped or kept from before, with a reason (None: no step says)."""
    counts = [
        _count(warnings.get("count"))
        for step in state.steps
        if isinstance(warnings := (step.result or {}).get("warnings"), dict)
    ]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


WARNING_ITEMS = 5


def _warning_items(state: JobState) -> str | None:
    """The first few `path: reason` lines of the job's warnings, one a line (None: there are none)."""
    items = [
        str(item)
        for step in state.steps
        if isinstance(warnings := (step.result or {}).get("warnings"), dict)
        and isinstance(listed := warnings.get("items"), list)
        for item in listed
    ]
    return "\n".join(items[:WARNING_ITEMS]) if items else None


def _first(row: Row | None, meta: EventMeta) -> Row:
    if row is not None:
        return row
    return {"requested_at": meta.recorded_at, "actor": meta.actor, "correlation_id": meta.correlation_id}


def _first_time(row: Row | None, column: str, meta: EventMeta, now: bool) -> datetime | None:
    earlier: datetime | None = row.get(column) if row is not None else None
    if earlier is not None:
        return earlier
    return meta.recorded_at if now else None


def _count(value: object) -> int | None:
    # Results are whatever a step chose to report: a figure of another type, or too large for a
    # BIGINT column, reads as unknown rather than failing the append that reports it.
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


def _seconds(value: object) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _safety_copy(state: RestoreJob) -> str | None:
    # The stage step names the copy of the live database before apply replaces it, so an in-place
    # restore that fails after staging still says where the old data went.
    for result in (state.result, *(step.result for step in reversed(state.steps))):
        copy = (result or {}).get("safety_copy")
        if isinstance(copy, str):
            return copy
    return None


SETTINGS_ROW = "settings"


def fold_settings(row: Row | None, event: Event, meta: EventMeta, version: int) -> Row:
    """The `backup_settings` row once an event of the settings stream is applied: every value set
    so far, by key, and the version (a destination's events move it, and change no value)."""
    values = json.loads(row["changed_values"]) if row is not None else {}
    if isinstance(event, SettingsChanged):
        for change in event.changes:
            values[change.key] = change.new
    return {
        "name": SETTINGS_ROW,
        "version": version,
        "changed_values": json.dumps(values, sort_keys=True),
        "changed_at": meta.recorded_at,
        "changed_by": meta.actor,
        "last_position": meta.position,
    }


def fold_schedule_run(row: Row | None, event: ScheduleFired, meta: EventMeta) -> Row:
    """The `schedule_runs` row once a run is recorded; an older due time never replaces a newer."""
    if row is not None and row["due_at"] >= event.due_at:
        return row
    return {
        "schedule": event.schedule,
        "due_at": event.due_at,
        "fired_at": meta.recorded_at,
        "job_id": event.job_id,
        "coalesced": event.coalesced,
        "missed": event.missed,
        "late_seconds": event.late_seconds,
        "last_position": meta.position,
    }


def fold_snapshot_mark(row: Row | None, event: Event, meta: EventMeta, version: int) -> Row:
    """The `snapshot_marks` row once a snapshot's tag change or forgetting is applied."""
    snapshot_id = getattr(event, "snapshot_id", "")
    held = row or {
        "snapshot_id": snapshot_id,
        "forgotten_at": None,
        "forgotten_by": None,
        "forget_reason": None,
        "forget_rule": None,
        "tags_added": "[]",
        "tags_removed": "[]",
    }
    folded = {**held, "version": version, "last_position": meta.position}
    if isinstance(event, SnapshotForgotten) and held["forgotten_at"] is None:
        folded.update(
            forgotten_at=meta.recorded_at,
            forgotten_by=meta.actor,
            forget_reason=event.reason,
            forget_rule=event.rule,
        )
    elif isinstance(event, SnapshotTagsChanged):
        added, removed = set(json.loads(held["tags_added"])), set(json.loads(held["tags_removed"]))
        added = (added - set(event.removed)) | set(event.added)
        removed = (removed - set(event.added)) | set(event.removed)
        folded.update(tags_added=json.dumps(sorted(added)), tags_removed=json.dumps(sorted(removed)))
    return folded


def _first_proven(state: DrillJob) -> str | None:
    for step in state.steps:
        snapshot_id = (step.result or {}).get("snapshot_id") if step.status == "completed" else None
        if isinstance(snapshot_id, str):
            return snapshot_id
    return None


def proof_key(event: Event) -> str | None:
    """The kind whose `drill_proofs` row `event` writes: only a drill step that completed writes one."""
    if isinstance(event, StepCompleted) and event.step in DRILL_PLAN:
        return kind_of(event.step)
    return None


def fold_proof(row: Row | None, event: StepCompleted, meta: EventMeta) -> Row:
    """The `drill_proofs` row of the kind a drill step proved; a later proof replaces an earlier one."""
    if row is not None and row["last_position"] >= meta.position:
        return row
    result = event.result
    return {
        "kind": kind_of(event.step),
        "snapshot_id": str(result.get("snapshot_id")),
        "taken_at": _manifest_time(result) or meta.recorded_at,
        "job_id": event.job_id,
        "proven_at": meta.recorded_at,
        "last_position": meta.position,
    }


def dest_object_key(destination_id: str, kind: str, name: str) -> str:
    """The primary key of one object of one destination in `backup_dest_objects`."""
    return f"{destination_id}/{kind}/{name}"


def fold_dest_objects(event: Event, meta: EventMeta, destination_id: str) -> list[tuple[str, Row]]:
    """The `backup_dest_objects` rows an event of a destination's stream writes, by key."""
    changes: list[tuple[DestinationObject, str, bool]] = []
    if isinstance(event, DestinationObjectsUploaded):
        changes = [(o, "sent", False) for o in event.objects]
    elif isinstance(event, DestinationObjectsListed):
        changes = [(o, "found", False) for o in event.found] + [(o, "lost", True) for o in event.lost]
    elif isinstance(event, DestinationObjectsDeleted):
        changes = [(o, "sent", True) for o in event.objects]
    else:
        return []
    destination = str(getattr(event, "destination", ""))
    return [
        (
            dest_object_key(destination_id, o.kind, o.name),
            {
                "object_key": dest_object_key(destination_id, o.kind, o.name),
                "destination_id": destination_id,
                "destination": destination,
                "kind": o.kind,
                "name": o.name,
                "size": o.size,
                "origin": origin,
                "recorded_at": meta.recorded_at,
                "job_id": event.job_id,
                "deleted_at": meta.recorded_at if gone else None,
                "last_position": meta.position,
            },
        )
        for o, origin, gone in changes
    ]
