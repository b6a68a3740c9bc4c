"""Read models derived from the event log: jobs, snapshots, restore jobs, the settings, the
schedules' last runs and the snapshots restore drills proved.

They are written by `ProjectionHandler` in the transaction of every append, and can be rebuilt from
the log at any time by `replay`; nothing else writes them and nothing in them is the truth.
"""

from capsule.orchestrator.projections.inplace import schema_in_place
from capsule.orchestrator.projections.live import ProjectionHandler, project
from capsule.orchestrator.projections.queries import (
    active_backup_for_source,
    active_prune,
    destination_objects,
    get_job,
    get_restore_job,
    jobs_queued_behind,
    last_schedule_runs,
    list_jobs,
    list_snapshots,
    proven_snapshots,
    settings_row,
    snapshot_marks_of,
    unfinished_jobs,
)
from capsule.orchestrator.projections.replay import ReplayReport, replay
from capsule.orchestrator.projections.rows import EventMeta, Row, fold_job, fold_restore_job, fold_snapshot
from capsule.orchestrator.projections.tables import (
    backup_settings,
    checkpoint,
    checkpoints,
    create_projection_schema,
    jobs,
    projection_checkpoints,
    restore_jobs,
    snapshots,
)

__all__ = [
    "EventMeta",
    "ProjectionHandler",
    "ReplayReport",
    "Row",
    "active_backup_for_source",
    "active_prune",
    "backup_settings",
    "checkpoint",
    "checkpoints",
    "create_projection_schema",
    "destination_objects",
    "fold_job",
    "fold_restore_job",
    "fold_snapshot",
    "get_job",
    "get_restore_job",
    "jobs",
    "jobs_queued_behind",
    "last_schedule_runs",
    "list_jobs",
    "list_snapshots",
    "project",
    "projection_checkpoints",
    "proven_snapshots",
    "replay",
    "restore_jobs",
    "schema_in_place",
    "settings_row",
    "snapshot_marks_of",
    "snapshots",
    "unfinished_jobs",
]
