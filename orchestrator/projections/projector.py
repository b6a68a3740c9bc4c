"""Applies events to the read models' rows in memory, through the pure folds of `rows`.

The live handler and `replay` differ only in where a projector finds what it has not seen: the
handler looks up rows and the job's earlier events in the database, inside the append's
transaction; replay starts from empty tables and keeps every row in memory. Either way each event
goes through the same `apply`, so both write the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any, Protocol

from capsule.domain import backup_job, drill_job, prune_job, restore_job
from capsule.domain.backup_job import BackupJob
from capsule.domain.drill_job import DrillJob
from capsule.domain.errors import InvalidEvent
from capsule.domain.events import Event, ScheduleFired, SnapshotRecovered, StepCompleted
from capsule.domain.jobs import JobState, is_finished
from capsule.domain.restore_job import RestoreJob
from capsule.orchestrator import codec
from capsule.orchestrator.codec import JobType
from capsule.orchestrator.eventstore import StoredEvent
from capsule.orchestrator.projections.rows import (
    SETTINGS_ROW,
    EventMeta,
    Row,
    fold_dest_objects,
    fold_job,
    fold_proof,
    fold_restore_job,
    fold_schedule_run,
    fold_settings,
    fold_snapshot,
    fold_snapshot_mark,
    proof_key,
    recovered_snapshot_row,
    snapshot_key,
)
from capsule.orchestrator.projections.tables import (
    PROJECTIONS,
    backup_dest_objects,
    backup_settings,
    drill_proofs,
    jobs,
    restore_jobs,
    schedule_runs,
    snapshot_marks,
    snapshots,
)


@dataclass(frozen=True, slots=True)
class _Aggregate:
    initial: Callable[[], JobState]
    evolve: Callable[[Any, Event], JobState]


_AGGREGATES: dict[JobType, _Aggregate] = {
    "backup": _Aggregate(backup_job.initial_state, backup_job.evolve),
    "restore": _Aggregate(restore_job.initial_state, restore_job.evolve),
    "drill": _Aggregate(drill_job.initial_state, drill_job.evolve),
    "prune": _Aggregate(prune_job.initial_state, prune_job.evolve),
}


class Source(Protocol):
    """Where a projector finds the rows and events it has not been given."""

    def row(self, table: str, key: str) -> Row | None:
        """The stored row of `table` with primary key `key`, or None."""
        ...

    def events_before(self, stream_id: str, version: int) -> list[StoredEvent]:
        """The events of `stream_id` with a version below `version`, in version order."""
        ...


class Projector:
    """The rows that events change, by table name and primary key, ready to be written."""

    def __init__(self, source: Source, *, keep_finished: bool = True) -> None:
        self.rows: dict[str, dict[str, Row]] = {t.name: {} for t in PROJECTIONS}
        self.snapshot_positions: dict[str, int] = {}
        """The position of the event that wrote each snapshot row, to merge folds made apart."""
        self._source = source
        # Per stream: the version applied last and the job's state after it. Nothing happens to a
        # finished job, so replay lets its state go and rebuilds it from the log if it must.
        self._states: dict[str, tuple[int, JobState]] = {}
        self._keep_finished = keep_finished

    def apply(self, stored: StoredEvent) -> None:
        """Fold one event of the log into the rows; events of streams that hold no job are skipped,
        except the snapshots a repaired log recovered from the repository."""
        job = codec.job_of_stream(stored.stream_id)
        if job is None:
            if codec.is_log_stream(stored.stream_id):
                self._apply_log_event(stored)
            elif codec.is_settings_stream(stored.stream_id):
                self._apply_settings_event(stored)
            elif codec.is_schedule_stream(stored.stream_id):
                self._apply_schedule_event(stored)
            elif codec.is_snapshot_stream(stored.stream_id):
                self._apply_snapshot_event(stored)
            elif codec.is_destination_stream(stored.stream_id):
                self._apply_destination_event(stored)
            return
        aggregate = _AGGREGATES[job[0]]
        event = codec.decode(stored)
        state = aggregate.evolve(self._state_before(stored, aggregate), event)
        if self._keep_finished or not is_finished(state):
            self._states[stored.stream_id] = (stored.version, state)
        else:
            self._states.pop(stored.stream_id, None)
        meta = EventMeta.of(stored)
        self._put(jobs.name, state.job_id, fold_job(self._row(jobs.name, state.job_id), event, meta, state))
        if isinstance(state, RestoreJob):
            row = self._row(restore_jobs.name, state.job_id)
            self._put(restore_jobs.name, state.job_id, fold_restore_job(row, event, meta, state))
        elif isinstance(state, BackupJob) and (key := snapshot_key(event)) is not None:
            held = self._row(snapshots.name, key)
            folded = fold_snapshot(held, event, meta, state)
            if folded is not None and folded is not held:
                self._put(snapshots.name, key, folded)
                self.snapshot_positions[key] = stored.position
        elif isinstance(state, DrillJob) and isinstance(event, StepCompleted) and (kind := proof_key(event)):
            self._put(drill_proofs.name, kind, fold_proof(self._row(drill_proofs.name, kind), event, meta))

    def _apply_log_event(self, stored: StoredEvent) -> None:
        event = codec.decode(stored)
        if isinstance(event, SnapshotRecovered):
            self._put(snapshots.name, event.snapshot_id, recovered_snapshot_row(event))
            self.snapshot_positions[event.snapshot_id] = stored.position

    def _apply_settings_event(self, stored: StoredEvent) -> None:
        # Every event of the stream moves the settings' version, a destination's too: `settings
        # set --if-version` compares against the stream's version.
        event = codec.decode(stored)
        row = self._row(backup_settings.name, SETTINGS_ROW)
        self._put(
            backup_settings.name,
            SETTINGS_ROW,
            fold_settings(row, event, EventMeta.of(stored), stored.version),
        )

    def _apply_schedule_event(self, stored: StoredEvent) -> None:
        event = codec.decode(stored)
        if isinstance(event, ScheduleFired):
            row = self._row(schedule_runs.name, event.schedule)
            self._put(schedule_runs.name, event.schedule, fold_schedule_run(row, event, EventMeta.of(stored)))

    def _apply_snapshot_event(self, stored: StoredEvent) -> None:
        event = codec.decode(stored)
        key = stored.stream_id.removeprefix(codec.SNAPSHOT_STREAM_PREFIX)
        row = self._row(snapshot_marks.name, key)
        self._put(
            snapshot_marks.name, key, fold_snapshot_mark(row, event, EventMeta.of(stored), stored.version)
        )

    def _apply_destination_event(self, stored: StoredEvent) -> None:
        if not stored.type.startswith("DestinationObjects"):
            return  # upload sessions and failures: read from the stream itself
        destination_id = stored.stream_id.removeprefix(codec.DESTINATION_STREAM_PREFIX)
        for key, row in fold_dest_objects(codec.decode(stored), EventMeta.of(stored), destination_id):
            self._put(backup_dest_objects.name, key, row)

    def _state_before(self, stored: StoredEvent, aggregate: _Aggregate) -> JobState:
        known = self._states.get(stored.stream_id)
        if known is not None and known[0] == stored.version - 1:
            return known[1]
        if stored.version == 1:
            return aggregate.initial()
        earlier = self._source.events_before(stored.stream_id, stored.version)
        if [e.version for e in earlier] != list(range(1, stored.version)):
            raise InvalidEvent(
                f"stream {stored.stream_id!r} does not hold versions 1 to {stored.version - 1} "
                f"before its event at position {stored.position}"
            )
        return reduce(aggregate.evolve, (codec.decode(e) for e in earlier), aggregate.initial())

    def _row(self, table: str, key: str) -> Row | None:
        held = self.rows[table].get(key)
        return held if held is not None else self._source.row(table, key)

    def _put(self, table: str, key: str, row: Row) -> None:
        self.rows[table][key] = row
