"""Events: what happened to a backup or restore job, in the past tense, as the log stores it.

An event is a fact: once appended it is never rewritten. Each class has a stable `type_name` (the
`type` column of the log) and a `schema_version`; a changed shape gets a new version here and an
upcaster in the event store, so old rows keep loading. The actor who caused an event belongs in its
metadata, not in the event.

Step events are shared by every kind of job: a job's stream (`backup-<id>`, `restore-<id>`,
`drill-<id>`, `prune-<id>`) says which job they belong to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, JsonValue, ValidationError

from capsule.domain.errors import Category, InvalidEvent, UnknownEvent
from capsule.domain.settings import SEALED_PREFIX


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
"""A timezone-aware instant, normalised to UTC; naive datetimes are refused."""

JsonObject = dict[str, JsonValue]
"""JSON data the domain carries without interpreting it (step results, progress details)."""

BackupKind = Literal["database", "files", "all"]


class Event(BaseModel):
    """Something that happened to a job; the base of every event in the log."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type_name: ClassVar[str]
    schema_version: ClassVar[int] = 1

    job_id: str


class JobFailed(Event):
    """A job gave up; the base of the failure event of each kind of job."""

    step: str
    reason: str


class JobCancelled(Event):
    """A job was cancelled; the base of the cancellation event of each kind of job."""


# Backup jobs


class BackupRequested(Event):
    """A backup job was requested, with the ordered steps it will run."""

    type_name: ClassVar[str] = "BackupRequested"

    kind: BackupKind
    source: str
    full: bool
    tags: tuple[str, ...]
    plan: tuple[str, ...]


class BackupQueued(Event):
    """A backup job was put behind another backup of the same source that is still running."""

    type_name: ClassVar[str] = "BackupQueued"

    behind_job_id: str


class BackupReleased(Event):
    """A queued backup job was allowed to start its steps."""

    type_name: ClassVar[str] = "BackupReleased"


class BackupCompleted(Event):
    """A backup job ran every step of its plan and committed a snapshot."""

    type_name: ClassVar[str] = "BackupCompleted"

    snapshot_id: str


class BackupFailed(JobFailed):
    """A backup job gave up on a step and will not run again."""

    type_name: ClassVar[str] = "BackupFailed"


class BackupCancelled(JobCancelled):
    """A backup job was cancelled before it finished."""

    type_name: ClassVar[str] = "BackupCancelled"


# Restore jobs


class RestoreRequested(Event):
    """A restore job was requested, with the ordered steps it will run."""

    type_name: ClassVar[str] = "RestoreRequested"
    schema_version: ClassVar[int] = 4

    snapshot_id: str
    target: str
    force: bool
    check: bool
    include: tuple[str, ...] = ()
    """Glob patterns: only the paths they match are restored (version 2; empty means everything)."""
    from_other_source: bool = False
    """An in-place restore may replace the database with a snapshot of another source (version 3)."""
    plan: tuple[str, ...]
    special_bits: bool = False
    """Give files and folders back their setuid and setgid bits (version 3; cleared otherwise)."""
    source: str | None = None
    """The copy restored from: a destination's name or a folder's path (version 4); None: the local
    repository."""


class RestoreCompleted(Event):
    """A restore job ran every step of its plan; `result` is what its last step reported."""

    type_name: ClassVar[str] = "RestoreCompleted"

    result: JsonObject


class RestoreFailed(JobFailed):
    """A restore job gave up on a step and will not run again."""

    type_name: ClassVar[str] = "RestoreFailed"


class RestoreCancelled(JobCancelled):
    """A restore job was cancelled before it finished."""

    type_name: ClassVar[str] = "RestoreCancelled"


# Restore drills: a job that restores the newest snapshots into a scratch folder, checks them and
# deletes the copy, so that "the backups restore" is a fact in the log, not a hope.


class DrillRequested(Event):
    """A restore drill was requested: prove the newest snapshots of these sources restorable."""

    type_name: ClassVar[str] = "DrillRequested"

    database_source: str
    """The database whose newest snapshot the drill restores and checks."""
    files_source: str
    """The images folder from whose newest snapshot the drill restores a sample."""
    sample_files: int
    """Images restored at least (all of them when the snapshot holds fewer)."""
    sample_percent: float
    """Or this share of the snapshot's images, when that is more."""
    plan: tuple[str, ...]


class DrillCompleted(Event):
    """A restore drill restored and checked what it set out to prove; its copies are deleted."""

    type_name: ClassVar[str] = "DrillCompleted"

    database_snapshot_id: str
    files_snapshot_id: str
    integrity_check: str
    """What SQLite's `PRAGMA integrity_check` said of the restored copy: `ok`."""
    foreign_key_check: str
    """`ok`, or how many rows break a foreign key (as they do in the live database too)."""
    images_total: int
    images_sampled: int
    images_checked: int
    """Sampled images restored with the manifest's size and SHA-256."""
    bytes: int
    """Bytes restored: the database and the sampled images."""
    seconds: float


class DrillFailed(JobFailed):
    """A restore drill found something that does not restore, or could not run; nothing is proven."""

    type_name: ClassVar[str] = "DrillFailed"


class DrillCancelled(JobCancelled):
    """A restore drill was cancelled before it finished."""

    type_name: ClassVar[str] = "DrillCancelled"


# Prune: a job that gives back the space of data no snapshot uses any more. It plans, copies the
# blobs still used out of mostly-unused packs, rewrites the index, waits out the backups that may
# still refer to the old packs, and only then deletes them.


class PruneRequested(Event):
    """A prune was requested: reclaim the space of packs whose blobs no snapshot uses."""

    type_name: ClassVar[str] = "PruneRequested"

    repack_unused_percent: int
    """A pack with at least this share of unused bytes has its used blobs copied out and goes."""
    plan: tuple[str, ...]


class PruneCompleted(Event):
    """A prune deleted what no snapshot uses; the figures are the repository's, before and after."""

    type_name: ClassVar[str] = "PruneCompleted"

    bytes_before: int
    """Bytes the repository held (every object but the locks) when the prune planned."""
    bytes_after: int
    """Bytes it holds once the condemned packs are deleted (backups made meanwhile included)."""
    bytes_deleted: int
    """Bytes of the packs deleted."""
    bytes_written: int
    """Bytes of the new packs the blobs still in use were copied into."""
    bytes_freed: int
    """What the prune gave back: `bytes_deleted` less `bytes_written`."""
    packs_deleted: int
    packs_repacked: int
    """Packs whose used blobs were copied into new packs before they were deleted."""
    packs_rescued: int
    """Packs planned for deletion that a backup came to use meanwhile: kept."""
    seconds: float


class PruneFailed(JobFailed):
    """A prune gave up; nothing a snapshot uses was deleted."""

    type_name: ClassVar[str] = "PruneFailed"


class PruneCancelled(JobCancelled):
    """A prune was cancelled before it finished."""

    type_name: ClassVar[str] = "PruneCancelled"


# Steps, for every kind of job


class StepStarted(Event):
    """A worker took a step's next attempt, holding it until the lease expires."""

    type_name: ClassVar[str] = "StepStarted"

    step: str
    attempt: int
    worker: str
    lease_expires_at: UtcDatetime


class StepProgressed(Event):
    """A running attempt reported its progress and extended its lease."""

    type_name: ClassVar[str] = "StepProgressed"

    step: str
    attempt: int
    done: int
    total: int | None
    detail: JsonObject
    lease_expires_at: UtcDatetime


class StepCompleted(Event):
    """An attempt finished its step; `result` is what the step produced."""

    type_name: ClassVar[str] = "StepCompleted"

    step: str
    attempt: int
    result: JsonObject


class StepFailed(Event):
    """An attempt failed; `retry_at` says when the next one may run, or is None if none will."""

    type_name: ClassVar[str] = "StepFailed"
    schema_version: ClassVar[int] = 2

    step: str
    attempt: int
    error: str
    transient: bool
    retry_at: UtcDatetime | None
    category: Category
    """What kind of failure the error was (damaged, locked, ...); front doors map it to their codes."""


class StepLeaseExpired(Event):
    """A running attempt stopped reporting before its lease ran out, so it no longer counts."""

    type_name: ClassVar[str] = "StepLeaseExpired"

    step: str
    attempt: int


class StepInterrupted(Event):
    """A running attempt was stopped (Ctrl-C, SIGTERM) or its process found gone; the next may start."""

    type_name: ClassVar[str] = "StepInterrupted"

    step: str
    attempt: int
    reason: str
    """What stopped it, e.g. `interrupted (SIGINT)` or `its process (PID 4242 on till-1) is gone`."""


# The event log itself. A repair is a job of its own: its id names the stream (`eventlog-<id>`) and
# every event it appends.


class EventLogStarted(Event):
    """A new event log was started in place of a damaged one, which was set aside, not deleted."""

    type_name: ClassVar[str] = "EventLogStarted"

    damaged_log: str
    set_aside_as: tuple[str, ...]
    """Where the damaged file (and its -wal and -shm, when there were any) now is."""
    reason: str
    """What SQLite said of the damaged file."""
    detected_by: str
    """The command that found the damage: `repair-log`, or a backup or restore that went on."""


class SnapshotRecovered(Event):
    """A snapshot found in the repository was recorded in a new event log that had lost its backup."""

    type_name: ClassVar[str] = "SnapshotRecovered"

    snapshot_id: str
    kind: str
    source: str
    time: UtcDatetime
    made_by_job: str | None
    """The backup job that wrote the snapshot, as its manifest says; that job's events are not here."""
    totals: JsonObject


class RepositoryRecovered(Event):
    """A new machine took the repository and the event log back from a copy (`capsule recover`)."""

    type_name: ClassVar[str] = "RepositoryRecovered"

    source: str
    """The destination or folder the copy was read from, as `--from` named it."""
    location: str
    """Where that copy is (a folder, a Drive folder's name)."""
    log_copy: str
    """The generation of the event log's copy that was restored."""
    head_position: int
    """The position of the last event restored from the copy."""
    repository: str
    """The local repository the objects were copied into."""
    objects_copied: int
    refused_copies: tuple[str, ...] = ()
    """Newer generations of the log's copy that did not open or hold together."""
    set_aside: tuple[str, ...] = ()
    """The files of this machine's own short log (and its key), kept under these names."""


# Snapshots: each snapshot has a stream of its own (`snapshot-<id>`) for what happens to it after
# its backup: tags added and removed, and its forgetting. Appends there are made at the version
# read, so that of two processes forgetting the same snapshot only one records it. The `job_id` of
# these events is the id of the `forget` or `tag` run that made them, so that the audit log can
# group one run's events.


class SnapshotForgotten(Event):
    """A snapshot was forgotten: its manifest goes from the repository, its data waits for `prune`."""

    type_name: ClassVar[str] = "SnapshotForgotten"

    # Why first: the audit log's one-line summary shows the first fields, and the stream names the id.
    reason: Literal["policy", "by hand"]
    rule: str | None
    """Why no rule of the policy keeps it (`daily 2026-12-05 is kept by 3f2a1b2c3d4e`); None by hand."""
    kind: str
    time: UtcDatetime
    """When the snapshot was taken, as its manifest says."""
    snapshot_id: str
    policy: JsonObject | None
    """The retention policy that kept it no longer, as set then (hyphenated keys); None by hand."""
    forced: bool = False
    """Forgotten by hand although it was pinned or the last snapshot of its kind and source."""


class SnapshotTagsChanged(Event):
    """Tags were added to a snapshot or removed from it (the tag `keep` pins it)."""

    type_name: ClassVar[str] = "SnapshotTagsChanged"

    snapshot_id: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


# Settings: one stream (`settings`) for the whole document. A change has an id of its own, in the
# place of a job's, so that the audit log can name it.


class SettingChange(BaseModel):
    """One key of the settings, with its value before and after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    old: JsonValue
    new: JsonValue


class SettingsChanged(Event):
    """Someone changed settings: every key changed, with its old and new value (who: the metadata)."""

    type_name: ClassVar[str] = "SettingsChanged"

    changes: tuple[SettingChange, ...]


# Destinations: off-site copies of the repository, part of the settings aggregate, so their events
# go in the `settings` stream beside `SettingsChanged` (see domain/destinations.py). A secret (a
# Drive client secret, a refresh token) is only ever held sealed: an event refuses one in plain text.


def _sealed(value: str | None) -> str | None:
    if value is not None and not value.startswith(SEALED_PREFIX):
        raise ValueError("a destination's secret must be sealed before it becomes an event")
    return value


SealedText = Annotated[str, AfterValidator(_sealed)]
"""A secret as an event may hold it: `sealed:v1:...` (orchestrator/secrets.py), never plain text."""


class DestinationAdded(Event):
    """An admin added an off-site destination: a folder, or a Google Drive folder with its consent."""

    type_name: ClassVar[str] = "DestinationAdded"

    name: str
    kind: Literal["folder", "gdrive"]
    path: str | None = None
    """A folder destination's absolute path."""
    folder_name: str | None = None
    """A Drive destination's folder name."""
    client_id: str | None = None
    token_uri: str | None = None
    client_secret: SealedText | None = None
    refresh_token: SealedText | None = None


class DestinationRemoved(Event):
    """An admin removed a destination; what it holds stays where it is."""

    type_name: ClassVar[str] = "DestinationRemoved"

    name: str


class DestinationConsentRenewed(Event):
    """An admin gave a Drive destination a new refresh token (consent given again)."""

    type_name: ClassVar[str] = "DestinationConsentRenewed"

    name: str
    refresh_token: SealedText


_TOKEN_SHAPES = ("1//", "ya29.", "GOCSPX-", "4/")


def _no_token(value: str) -> str:
    if any(shape in value for shape in _TOKEN_SHAPES):
        raise ValueError("a consent's reason must not hold a secret: say what happened, not the token")
    return value


class DestinationConsentNeeded(Event):
    """A Drive destination refused Capsule's authorization (revoked or expired); it needs consent again."""

    type_name: ClassVar[str] = "DestinationConsentNeeded"

    name: str
    reason: Annotated[str, AfterValidator(_no_token)]
    """What was seen, in words; never a token or the token endpoint's answer."""


class DestinationEnabled(Event):
    """An admin turned a destination back on: copies go to it again."""

    type_name: ClassVar[str] = "DestinationEnabled"

    name: str


class DestinationDisabled(Event):
    """An admin turned a destination off without removing it: nothing is copied to it meanwhile."""

    type_name: ClassVar[str] = "DestinationDisabled"

    name: str


class DestinationPaused(Event):
    """A destination kept refusing uploads for its rate limit: none is sent to it before `until`."""

    type_name: ClassVar[str] = "DestinationPaused"

    name: str
    until: UtcDatetime
    reason: str
    """Capsule's own words for what was seen; never a token or a session address."""


class DestinationResumed(Event):
    """An admin let uploads to a paused destination go on before its pause ran out."""

    type_name: ClassVar[str] = "DestinationResumed"

    name: str


class DestinationBandwidthLimited(Event):
    """An admin capped the bytes a second uploads to a destination may use (None: no cap)."""

    type_name: ClassVar[str] = "DestinationBandwidthLimited"

    name: str
    bytes_per_second: int | None


# What each destination holds: one stream per destination (`destination-<id>`, the id being the
# change that added it, so that a destination removed and added again under its name starts
# afresh). The `job_id` of these events is the backup job or the `capsule sync` run that made them.
# Objects are recorded in batches, never one event per object.


class DestinationObject(BaseModel):
    """One object of the repository on a destination: its kind, its name and its size in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    name: str
    size: int


class DestinationObjectsUploaded(Event):
    """Capsule wrote these objects to the destination; `done`: it then held all the local ones."""

    type_name: ClassVar[str] = "DestinationObjectsUploaded"

    destination: str
    objects: tuple[DestinationObject, ...]
    done: bool = False


class DestinationObjectsListed(Event):
    """A listing found objects the log did not know of there (`found`) and missed some it did (`lost`)."""

    type_name: ClassVar[str] = "DestinationObjectsListed"

    destination: str
    found: tuple[DestinationObject, ...]
    lost: tuple[DestinationObject, ...]


class DestinationObjectsDeleted(Event):
    """Capsule deleted objects it had sent there that a prune or a forget deleted locally."""

    type_name: ClassVar[str] = "DestinationObjectsDeleted"

    destination: str
    objects: tuple[DestinationObject, ...]


class DestinationUploadFailed(Event):
    """An upload to the destination stopped before it held every object; the next one goes on."""

    type_name: ClassVar[str] = "DestinationUploadFailed"

    destination: str
    error: str
    """Capsule's own sentence for the error (its errors never hold a secret)."""
    category: Category


class UploadSessionOpened(Event):
    """A resumable upload of one object began; its session address is sealed (it grants access)."""

    type_name: ClassVar[str] = "UploadSessionOpened"

    destination: str
    kind: str
    name: str
    size: int
    uri: SealedText


class UploadSessionClosed(Event):
    """A resumable upload finished or its session expired: its address is no longer needed."""

    type_name: ClassVar[str] = "UploadSessionClosed"

    destination: str
    kind: str
    name: str


# Schedules: a schedule's run at one due time is a stream of its own (`schedule-<name>-<due>`) that
# holds one event, so that two schedulers can never both start it.


class ScheduleFired(Event):
    """A schedule was due: its job was requested (`job_id`), or joined while still running (`coalesced`)."""

    type_name: ClassVar[str] = "ScheduleFired"

    schedule: str
    due_at: UtcDatetime
    missed: int
    """Due times that passed without a run, this one included: more than 1 after downtime."""
    late_seconds: float
    coalesced: bool


# Alerts: each incident key (`overdue-database`, `failed-files`, `drill-failed`) has a stream of its
# own (`alert-<key>`), where an incident is raised, told to each target, and cleared, and may later
# be raised again. Appends there are made at the version read, so that of two processes that see the
# same problem only one raises it. The `job_id` of these events is the incident's own id.

AlertNotice = Literal["raised", "cleared", "test"]
AlertChannel = Literal["email", "webhook"]


class AlertRaised(Event):
    """Something needs attention (overdue, a failed backup or drill, a consent): an incident began."""

    type_name: ClassVar[str] = "AlertRaised"

    incident: str
    """The incident's key: `overdue-database`, `failed-files`, `drill-failed`, `consent-drive`."""
    reason: Literal["overdue", "job_failed", "drill_failed", "consent_needed", "upload_behind"]
    subject: str
    """The kind, `drill`, or a destination's name."""
    summary: str
    """One line that says what is wrong, as `capsule status --check` prints it."""
    cause_job_id: str | None
    at: UtcDatetime


class AlertCleared(Event):
    """An incident ended: what was wrong is no longer (a good backup, a passing drill)."""

    type_name: ClassVar[str] = "AlertCleared"

    incident: str
    summary: str
    at: UtcDatetime


class AlertDelivered(Event):
    """A raised, cleared or test alert reached one target."""

    type_name: ClassVar[str] = "AlertDelivered"

    incident: str
    notice: AlertNotice
    channel: AlertChannel
    target: str
    """The e-mail recipients, or the webhook's address without its path (which may hold a token)."""
    attempt: int
    at: UtcDatetime


class AlertDeliveryFailed(Event):
    """A try to tell one target failed; `next_try_at` says when the next runs, or is None if none will."""

    type_name: ClassVar[str] = "AlertDeliveryFailed"

    incident: str
    notice: AlertNotice
    channel: AlertChannel
    target: str
    attempt: int
    error: str
    next_try_at: UtcDatetime | None
    at: UtcDatetime


# Keys: one stream (`keys`) for the repository's ways in. A change has an id of its own in the
# place of a job's. Ids and types only: no key material is ever in an event.


class RepositoryKeyChanged(Event):
    """A key was added, removed or replaced, or a paper key typed back (who: the metadata)."""

    type_name: ClassVar[str] = "RepositoryKeyChanged"

    change: Literal["added", "removed", "passphrase changed", "imported"]
    key_type: Literal["key-file", "passphrase", "damaged"]
    key_id: str | None
    """The key entry (32 hex digits); None for a paper key typed back before its repository arrived."""
    replaced_key_id: str | None = None
    """The passphrase entry a new passphrase replaced."""
    repository: str
    """The first 8 hex digits of the repository id."""


def _registry(*classes: type[Event]) -> dict[str, type[Event]]:
    registry: dict[str, type[Event]] = {}
    for cls in classes:
        if cls.type_name in registry:
            raise TypeError(f"two event classes share the type name {cls.type_name!r}")
        registry[cls.type_name] = cls
    return registry


EVENT_TYPES: dict[str, type[Event]] = _registry(
    BackupRequested,
    BackupQueued,
    BackupReleased,
    BackupCompleted,
    BackupFailed,
    BackupCancelled,
    RestoreRequested,
    RestoreCompleted,
    RestoreFailed,
    RestoreCancelled,
    StepStarted,
    StepProgressed,
    StepCompleted,
    StepFailed,
    StepLeaseExpired,
    StepInterrupted,
    EventLogStarted,
    SnapshotRecovered,
    RepositoryRecovered,
    SettingsChanged,
    ScheduleFired,
    DrillRequested,
    DrillCompleted,
    DrillFailed,
    DrillCancelled,
    PruneRequested,
    PruneCompleted,
    PruneFailed,
    PruneCancelled,
    AlertRaised,
    AlertCleared,
    AlertDelivered,
    AlertDeliveryFailed,
    SnapshotForgotten,
    SnapshotTagsChanged,
    DestinationAdded,
    DestinationRemoved,
    DestinationConsentRenewed,
    DestinationConsentNeeded,
    DestinationEnabled,
    DestinationDisabled,
    DestinationPaused,
    DestinationResumed,
    DestinationBandwidthLimited,
    DestinationObjectsUploaded,
    DestinationObjectsListed,
    DestinationObjectsDeleted,
    DestinationUploadFailed,
    UploadSessionOpened,
    UploadSessionClosed,
    RepositoryKeyChanged,
)
"""Every event the log may hold, by its stored type name."""


def event_type(event: Event) -> str:
    """The name the log stores in its `type` column for `event`."""
    return type(event).type_name


def event_payload(event: Event) -> dict[str, Any]:
    """The event's data, ready for JSON; `load_event` turns it back into an equal event."""
    return event.model_dump(mode="json")


def load_event(type_name: str, data: dict[str, Any], *, schema_version: int | None = None) -> Event:
    """The event stored as `type_name` with `data`, already upcast to `schema_version` if given.

    Upcasting belongs to the event store, which reads rows of any version; by the time data gets
    here it must be in the shape of the class's current `schema_version`.
    """
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise UnknownEvent(f"the log holds an event of type {type_name!r}, which this Capsule does not know")
    if schema_version is not None and schema_version != cls.schema_version:
        newer = "newer" if schema_version > cls.schema_version else "older"
        raise UnknownEvent(
            f"a {type_name} event arrived at schema version {schema_version}, {newer} than the version "
            f"{cls.schema_version} this Capsule reads; upgrade Capsule or register the missing upcaster"
        )
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise InvalidEvent(f"a stored {type_name} event does not fit its type: {e}") from e
