"""The backup job aggregate: one stream `backup-<job_id>`, decided and evolved here.

A backup of the database or of the product images folder runs two steps: `store` (read, chunk,
compress, seal, pack) and `commit` (write the manifest); a backup of kind `all` runs both pairs,
`store:database`, `commit:database`, `store:files`, `commit:files`. Then one `upload:<name>` step
per destination enabled when the backup was requested, after every commit: the snapshot is stored
locally before any byte leaves the machine. The plan is data in BackupRequested, so later kinds and
settings can add steps (`retention`) without touching how steps run. Only one backup of a source
runs at a time: a request made while another backup of one of its sources is active is queued
behind it until a ReleaseBackup lets it start.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

from capsule.domain.commands import CompleteStep, ReleaseBackup, RequestBackup
from capsule.domain.errors import InvalidCommand, InvalidEvent
from capsule.domain.events import (
    BackupCancelled,
    BackupCompleted,
    BackupFailed,
    BackupKind,
    BackupQueued,
    BackupReleased,
    BackupRequested,
    Event,
)
from capsule.domain.jobs import (
    JobCommand,
    JobRules,
    JobState,
    StepState,
    decide_job,
    evolve_job,
    require_job,
    update_job,
)
from capsule.domain.manifest import SnapshotKind

STREAM_PREFIX = "backup-"

STORE = "store"
COMMIT = "commit"
RETENTION = "retention"
UPLOAD_PREFIX = "upload:"


def stream_id(job_id: str) -> str:
    """The id of the event stream that holds backup job `job_id`."""
    return f"{STREAM_PREFIX}{job_id}"


def upload_step(destination: str) -> str:
    """The name of the step that copies the snapshot to `destination`."""
    return f"{UPLOAD_PREFIX}{destination}"


SOURCE_SEPARATOR = "\n"
"""Between the database and the folder in the `source` of a backup of kind `all`."""


def plan_for(kind: BackupKind, destinations: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The ordered steps a backup of `kind` runs, uploading to `destinations` last.

    A backup of kind `all` stores and commits the database first, then the files: one snapshot per
    source, and the database's is safe in the repository even if the files fail.
    """
    uploads = tuple(upload_step(name) for name in destinations)
    if kind in ("database", "files"):
        return (STORE, COMMIT, *uploads)
    return (f"{STORE}:database", f"{COMMIT}:database", f"{STORE}:files", f"{COMMIT}:files", *uploads)


def is_upload(step: str) -> bool:
    return step.startswith(UPLOAD_PREFIX)


def upload_destination(step: str) -> str:
    """The destination an `upload:<name>` step copies to."""
    return step.removeprefix(UPLOAD_PREFIX)


def sources_of(source: str) -> tuple[str, ...]:
    """Every source a backup's `source` names: one, or the database and the folder of kind `all`."""
    return tuple(source.split(SOURCE_SEPARATOR))


def all_source(database: str, folder: str) -> str:
    """The `source` of a backup of kind `all`."""
    return f"{database}{SOURCE_SEPARATOR}{folder}"


def step_target(kind: BackupKind, source: str, step: str) -> tuple[SnapshotKind, str]:
    """(snapshot kind, source path) that `step` of a backup of `kind` works on."""
    if kind != "all":
        return kind, source
    database, folder = sources_of(source)
    return ("files", folder) if step.endswith(":files") else ("database", database)


def is_commit(step: str) -> bool:
    return step == COMMIT or step.startswith(f"{COMMIT}:")


class BackupJob(JobState):
    """A backup job as its log tells it."""

    kind: BackupKind | None = None
    source: str = ""
    full: bool = False
    tags: tuple[str, ...] = ()
    snapshot_id: str | None = None

    @property
    def destinations(self) -> tuple[str, ...]:
        """The destinations its plan uploads to, in order."""
        return tuple(upload_destination(s.name) for s in self.steps if is_upload(s.name))


BackupCommand = RequestBackup | ReleaseBackup | JobCommand


def initial_state() -> BackupJob:
    """A backup job before anything was recorded."""
    return BackupJob()


def committed_snapshot_ids(state: BackupJob) -> list[str]:
    """The snapshots the commit steps wrote so far, in plan order; later steps (uploads) work on them."""
    found = []
    for step in state.steps:
        if is_commit(step.name) and step.result is not None:
            snapshot_id = step.result.get("snapshot_id")
            if isinstance(snapshot_id, str):
                found.append(snapshot_id)
    return found


def committed_snapshot_id(state: BackupJob) -> str | None:
    """The first snapshot the job committed (the database's, for a backup of kind `all`)."""
    found = committed_snapshot_ids(state)
    return found[0] if found else None


def _completed(state: BackupJob) -> Event:
    snapshot_id = committed_snapshot_id(state)
    if snapshot_id is None:
        raise InvalidCommand(
            f"backup job {state.job_id!r} cannot complete: its commit step named no snapshot"
        )
    return BackupCompleted(job_id=state.job_id, snapshot_id=snapshot_id)


RULES: JobRules[BackupJob] = JobRules(
    noun="backup", completed=_completed, failed=BackupFailed, cancelled=BackupCancelled
)


def decide(state: BackupJob, command: BackupCommand) -> list[Event]:
    """The events `command` records on the backup job in `state`; [] if it repeats what is recorded."""
    match command:
        case RequestBackup():
            return _request(state, command)
        case ReleaseBackup():
            require_job(state, command.job_id, RULES.noun)
            if state.status != "queued":
                return []
            return [BackupReleased(job_id=state.job_id)]
        case CompleteStep() if is_commit(command.step):
            snapshot_id = command.result.get("snapshot_id")
            if not isinstance(snapshot_id, str) or not snapshot_id:
                raise InvalidCommand("the commit step's result must give the `snapshot_id` it committed")
            return decide_job(state, command, RULES)
        case _:
            return decide_job(state, command, RULES)


def _request(state: BackupJob, c: RequestBackup) -> list[Event]:
    if state.status is not None:
        if c.job_id != state.job_id:
            raise InvalidCommand(f"a request for job {c.job_id!r} was sent to backup job {state.job_id!r}")
        # active_job_id is left out: on redelivery the backup it named may have finished since.
        # The destinations are left out too: one may have been turned off since the first delivery.
        if (state.kind, state.source, state.full, state.tags) != (c.kind, c.source, c.full, c.tags):
            raise InvalidCommand(
                f"backup job {c.job_id!r} was already requested with other settings; use a new job id"
            )
        return []
    problem = _source_problem(c.kind, c.source)
    if problem:
        raise InvalidCommand(problem)
    if len(set(c.destinations)) != len(c.destinations):
        raise InvalidCommand("a backup uploads to each destination once: a destination is named twice")
    if c.active_job_id == c.job_id:
        raise InvalidCommand(f"backup job {c.job_id!r} cannot be queued behind itself")
    requested = BackupRequested(
        job_id=c.job_id,
        kind=c.kind,
        source=c.source,
        full=c.full,
        tags=c.tags,
        plan=plan_for(c.kind, c.destinations),
    )
    if c.active_job_id is None:
        return [requested]
    return [requested, BackupQueued(job_id=c.job_id, behind_job_id=c.active_job_id)]


def _source_problem(kind: BackupKind, source: str) -> str | None:
    count = len(sources_of(source))
    if kind == "all" and count != 2:
        return "a backup of kind `all` needs the database and the folder as its two sources"
    if kind != "all" and count != 1:
        return f"the source of a {kind} backup is one path, without line breaks"
    return None


def evolve(state: BackupJob, event: Event) -> BackupJob:
    """The backup job once `event` has happened to it."""
    match event:
        case BackupRequested():
            if state.status is not None:
                raise InvalidEvent(f"backup job {event.job_id!r} was requested twice in its log")
            return BackupJob(
                job_id=event.job_id,
                status="pending",
                steps=tuple(StepState(name=name) for name in event.plan),
                kind=event.kind,
                source=event.source,
                full=event.full,
                tags=event.tags,
            )
        case BackupQueued():
            return update_job(state, event, status="queued", queued_behind=event.behind_job_id)
        case BackupReleased():
            return update_job(state, event, status="pending")
        case BackupCompleted():
            return update_job(state, event, status="completed", snapshot_id=event.snapshot_id)
        case _:
            return evolve_job(state, event, RULES)


def replay(events: Iterable[Event]) -> BackupJob:
    """The backup job its log describes: every event applied in order to the initial state."""
    return reduce(evolve, events, initial_state())
