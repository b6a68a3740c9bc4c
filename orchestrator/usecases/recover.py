"""Use case: bring a shop's Capsule back on a new machine from a copy (`capsule recover --from DEST`).

With only the key (the key file, or a paper key typed back) and a destination's copy, it copies the
repository's objects into the local repository, puts back the event log from the newest copy of it
that opens and holds together (capsule.orchestrator.usecases.logcopy), rebuilds the projections
from it, and records `RepositoryRecovered` after the restored events, so the audit history shows
who recovered what from where.

It never overwrites anything of value. The home may hold only what setting up a new machine leaves
in its event log: the key typed back (the `keys` stream) and the destinations added to reach the
copy (a Google Drive destination needs its consent first). That short log is set aside with its key
under dated names, not deleted, and its destinations and key events are recorded again after the
restored log, so that the destination used for the recovery works at once: the secrets of the old
machine's Drive destinations were sealed with its secrets key, which is not in the copy, and those
destinations need their credentials again (`capsule destinations list` says so). A local
repository folder that holds anything is refused, unless it is the same repository, partly copied
by a recovery that was interrupted: that one is completed.

Jobs the old machine had not finished when its log was copied are cancelled, each an event with
the recovering person as its actor: their work belonged to the old machine.

Safe to run again after it was interrupted: objects already copied are skipped, and the log is
built whole under a temporary name before it takes the log's place. Once the log is in place, the
home is no longer new, and a second recovery is refused.

On PostgreSQL the log is the database server's: restore it there; nothing here applies to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.keys import KEYS_STREAM

if TYPE_CHECKING:
    from capsule.adapters.repository.backends import Backend
    from capsule.domain.events import Event
    from capsule.domain.jobs import JobState
    from capsule.orchestrator.eventstore import EventStore, StoredEvent
    from capsule.orchestrator.eventstore.logexport import LogExport

Progress = Callable[[int, int], None]
T = TypeVar("T")
NEW_MARK = ".new-"
ASIDE_MARK = ".replaced-"


class RecoverRefused(CapsuleError):
    """Raised when a recovery would overwrite a log or a repository that holds something already."""

    category = Category.REFUSED


@dataclass(frozen=True)
class Recover:
    """Recover from `source` (a destination's name or a folder's path) into `to` (default: the
    configured repository)."""

    source: str
    to: Path | None = None
    passphrase: str | None = None


@dataclass(frozen=True)
class Recovered:
    recovery_id: str
    source: str
    location: str
    repository: Path
    objects_copied: int
    bytes_copied: int
    objects_present: int
    log_copy: str
    events: int
    """Events restored from the copy."""
    head_position: int
    refused_copies: tuple[tuple[str, str], ...]
    set_aside: tuple[Path, ...]
    needs_credentials: tuple[str, ...]
    """Drive destinations of the old machine whose secrets cannot be opened here."""
    cancelled: tuple[ClosedJob, ...] = ()
    """Jobs the old machine had not finished when its log was copied: cancelled here, not resumed."""

    @property
    def cancelled_jobs(self) -> tuple[str, ...]:
        return tuple(job.job_id for job in self.cancelled)


@dataclass(frozen=True)
class ClosedJob:
    """A job the restored log held unfinished, as far as it had gone in that copy of the log."""

    job_id: str
    job_type: str
    step: str | None
    """The first step it had not completed."""
    saved_snapshots: tuple[str, ...] = ()
    """A backup's snapshots committed before the copy: they are in the repository."""
    uploads_left: tuple[str, ...] = ()
    """Destinations a backup was still copying to, when nothing but its uploads was left: the copy
    of the log a backup's own upload step leaves shows it so."""


def recover(
    settings: Settings, request: Recover, progress: Progress | None = None, actor: str | None = None
) -> Recovered:
    """Copy the repository and the event log back from `request.source`; see the module's docstring."""
    from capsule.adapters.repository.backends import open_backend  # noqa: PLC0415
    from capsule.adapters.repository.copy import copy_repository  # noqa: PLC0415
    from capsule.adapters.repository.repo import Repository  # noqa: PLC0415
    from capsule.orchestrator.db import default_event_store_url, sqlite_file  # noqa: PLC0415
    from capsule.orchestrator.runtime import new_job_id, person  # noqa: PLC0415
    from capsule.orchestrator.usecases.logcopy import newest_log_copy  # noqa: PLC0415
    from capsule.orchestrator.usecases.source import open_source_backend  # noqa: PLC0415

    log = sqlite_file(settings.event_store_url or default_event_store_url(settings.home))
    if log is None:
        raise RecoverRefused(
            "the event log is on a database server (CAPSULE_EVENT_STORE_URL): `capsule recover` puts back "
            "a SQLite log only; restore the server's database from its own backup, or unset "
            "CAPSULE_EVENT_STORE_URL to recover into CAPSULE_HOME"
        )
    setup = _setup_events(log)
    target = Path(request.to) if request.to is not None else settings.repository
    source = open_source_backend(settings, request.source)
    given = request.passphrase or (settings.passphrase.get_secret_value() if settings.passphrase else None)
    repo = Repository.open(source, settings.resolved_key_file, given)
    found = newest_log_copy(repo, source)  # before any byte is copied: a copy without a log is refused
    local = open_backend(target)
    _check_target(target, local, repo.id)
    local.create_layout()
    counts = copy_repository(source, local, progress=progress)
    recovery_id = new_job_id()
    export = found.parsed.export
    refused = tuple(name for name, _ in found.refused)

    def record(store: EventStore, set_aside: tuple[Path, ...]) -> tuple[str, ...]:
        event = _recovered_event(
            recovery_id, request.source, source, found.name, export, target, counts.sent, refused, set_aside
        )
        return _record(settings, store, recovery_id, actor=actor or person(), setup=setup, recovered=event)

    recovered, set_aside = _put_log_in_place(settings, log, export, recovery_id, record)
    cancelled = _cancel_unfinished(settings, actor or person())
    return Recovered(
        recovery_id=recovery_id,
        source=request.source,
        location=source.describe(),
        repository=target,
        objects_copied=counts.sent,
        bytes_copied=counts.sent_bytes,
        objects_present=counts.skipped,
        log_copy=found.name,
        events=len(export.rows),
        head_position=export.head_position,
        refused_copies=found.refused,
        set_aside=set_aside,
        needs_credentials=recovered,
        cancelled=cancelled,
    )


def _cancel_unfinished(settings: Settings, actor: str) -> tuple[ClosedJob, ...]:
    """Cancel every job the restored log holds unfinished. Its copy may have been taken while a job
    ran (an upload step copies the log in the middle of its backup): that work belonged to the old
    machine, and carrying it on here (an in-place restore of the old machine's database path, a
    step holding a lock of a process that is gone) is not what a recovery is for. Each cancellation
    is an event with its actor, as `capsule cancel` records."""
    from capsule.domain.errors import InvalidCommand  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415
    from capsule.orchestrator.usecases.jobs import Cancel, cancel_job  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        unfinished = [
            _as_far_as_it_went(job_id, job_type, runtime.load(job_type, job_id).state)
            for job_id, job_type in runtime.unfinished()
        ]
    finally:
        runtime.close()
    cancelled = []
    for job in unfinished:
        try:
            cancel_job(settings, Cancel(job.job_id, actor=actor))
        except InvalidCommand:
            continue  # it finished meanwhile
        cancelled.append(job)
    return tuple(cancelled)


def _as_far_as_it_went(job_id: str, job_type: str, state: JobState) -> ClosedJob:
    from capsule.domain.backup_job import (  # noqa: PLC0415
        BackupJob,
        committed_snapshot_ids,
        is_upload,
        upload_destination,
    )
    from capsule.domain.jobs import current_step  # noqa: PLC0415

    step = current_step(state)
    if not isinstance(state, BackupJob):
        return ClosedJob(job_id, job_type, step.name if step else None)
    left = [s.name for s in state.steps if s.status != "completed"]
    only_uploads = bool(left) and all(is_upload(name) for name in left)
    return ClosedJob(
        job_id,
        job_type,
        step.name if step else None,
        saved_snapshots=tuple(committed_snapshot_ids(state)),
        uploads_left=tuple(upload_destination(name) for name in left) if only_uploads else (),
    )


def _setup_events(log: Path) -> list[StoredEvent]:
    """The events of this home's log, if they are only what setting up a new machine records;
    RecoverRefused otherwise."""
    if not log.exists():
        return []
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.db import make_engine  # noqa: PLC0415
    from capsule.orchestrator.eventstore import EventStore  # noqa: PLC0415

    engine = make_engine(f"sqlite:///{log}")
    try:
        store = EventStore(engine, upcasters=codec.upcasters())
        found: list[StoredEvent] = []
        while batch := store.read_all(found[-1].position if found else 0):
            found.extend(batch)
    finally:
        engine.dispose()
    other = [e for e in found if not _is_setup(e)]
    if other:
        raise RecoverRefused(
            f"the event log {log} already holds {len(other)} events of its own (backups, jobs or settings, "
            f"the first a {other[0].type}): recover only into a new Capsule home; set CAPSULE_HOME to an "
            "empty folder (or move this one aside) and run the command again. Nothing was changed"
        )
    return found


def _is_setup(event: StoredEvent) -> bool:
    from capsule.orchestrator import codec  # noqa: PLC0415

    if event.stream_id == KEYS_STREAM:
        return True
    return codec.is_settings_stream(event.stream_id) and event.type.startswith("Destination")


def _check_target(target: Path, local: Backend, repository_id: str) -> None:
    from capsule.adapters.repository.repo import read_config  # noqa: PLC0415

    if local.exists("config", "config"):
        if read_config(local).get("id") == repository_id:
            return  # a recovery that was interrupted: the copy skips what is there
        raise RecoverRefused(
            f"{target} holds another repository: recover into an empty folder (--to PATH, then set "
            "CAPSULE_REPOSITORY to it), or move that one aside first. Nothing was changed"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RecoverRefused(
            f"{target} is not an empty folder: recover into an empty folder (--to PATH, then set "
            "CAPSULE_REPOSITORY to it), or move what is there aside first. Nothing was changed"
        )


def _put_log_in_place(
    settings: Settings,
    log: Path,
    export: LogExport,
    recovery_id: str,
    record: Callable[[EventStore, tuple[Path, ...]], T],
) -> tuple[T, tuple[Path, ...]]:
    """Build the restored log and its key file beside the log's, `record` the recovery in it, then
    set this home's short log and its key aside and give the new ones their names. Returns what
    `record` gave, and the names set aside. Until the last renames, the home is as it was."""
    from capsule.adapters.repository.backends.local import atomic_write, fsync_dir  # noqa: PLC0415
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.db import make_engine  # noqa: PLC0415
    from capsule.orchestrator.errors import EventStoreError  # noqa: PLC0415
    from capsule.orchestrator.eventstore import ChainKeyFile, EventStore, create_schema  # noqa: PLC0415
    from capsule.orchestrator.eventstore.chain import KEY_FILE_HEADER  # noqa: PLC0415
    from capsule.orchestrator.eventstore.logexport import import_log  # noqa: PLC0415
    from capsule.orchestrator.projections import create_projection_schema  # noqa: PLC0415
    from capsule.orchestrator.projections.replay import replay  # noqa: PLC0415

    key_file = settings.resolved_event_log_key_file
    for folder, name in ((log.parent, log.name), (key_file.parent, key_file.name)):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in folder.glob(f"{name}{NEW_MARK}*"):
            leftover.unlink()  # a recovery killed before its renames
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    aside = [
        (path, path.with_name(f"{path.name}{ASIDE_MARK}{stamp}"))
        for path in (log, Path(f"{log}-wal"), Path(f"{log}-shm"), key_file)
        if path.exists()
    ]
    fresh = log.with_name(f"{log.name}{NEW_MARK}{recovery_id}")
    fresh_key = key_file.with_name(f"{key_file.name}{NEW_MARK}{recovery_id}")
    atomic_write(fresh_key, (KEY_FILE_HEADER + export.key.secret.hex() + "\n").encode("ascii"), 0o600)
    engine = make_engine(f"sqlite:///{fresh}")
    try:
        create_schema(engine)  # no key: the restored log brings its chain
        create_projection_schema(engine)
        with engine.begin() as conn:
            import_log(conn, export)
        replay(engine, EventStore(engine, upcasters=codec.upcasters()))
        store = EventStore(engine, upcasters=codec.upcasters(), chain_key=ChainKeyFile(fresh_key))
        recorded = record(store, tuple(moved for _, moved in aside))
    finally:
        engine.dispose()  # the last connection folds the WAL into the file
    if Path(f"{fresh}-wal").exists():
        raise EventStoreError(
            f"the restored event log {fresh} kept a WAL file after it was closed; try again"
        )
    Path(f"{fresh}-shm").unlink(missing_ok=True)
    for path, moved in aside:
        os.replace(path, moved)
    os.replace(fresh_key, key_file)
    os.replace(fresh, log)
    fsync_dir(log.parent)
    if key_file.parent != log.parent:
        fsync_dir(key_file.parent)
    return recorded, tuple(moved for _, moved in aside)


def _recovered_event(  # noqa: PLR0917 - one event's fields
    recovery_id: str,
    given: str,
    source: Backend,
    log_copy: str,
    export: LogExport,
    target: Path,
    copied: int,
    refused: tuple[str, ...],
    set_aside: tuple[Path, ...],
) -> Event:
    from capsule.domain.events import RepositoryRecovered  # noqa: PLC0415

    return RepositoryRecovered(
        job_id=recovery_id,
        source=given,
        location=source.describe(),
        log_copy=log_copy,
        head_position=export.head_position,
        repository=str(target.absolute()),
        objects_copied=copied,
        refused_copies=refused,
        set_aside=tuple(str(p.absolute()) for p in set_aside),
    )


def _record(
    settings: Settings,
    store: EventStore,
    recovery_id: str,
    *,
    actor: str,
    setup: list[StoredEvent],
    recovered: Event,
) -> tuple[str, ...]:
    """Append `recovered`, then this home's set-up again: its key events, and its destinations in
    the place of the old machine's of the same name. Returns the Drive destinations that still
    cannot open their secrets here."""
    from capsule.domain.events import DestinationAdded, DestinationRemoved  # noqa: PLC0415
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.destinations import destinations_of  # noqa: PLC0415
    from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415
    from capsule.orchestrator.projections import ProjectionHandler  # noqa: PLC0415
    from capsule.orchestrator.usecases.destinations import credentials_missing  # noqa: PLC0415

    meta, handler = Metadata(actor=actor, correlation_id=recovery_id), ProjectionHandler()

    def append(stream: str, events: list[Event]) -> None:
        if events:
            encoded = [codec.encode(e) for e in events]
            store.append(stream, store.stream_version(stream), encoded, meta, handlers=[handler])

    append(codec.log_stream_id(recovery_id), [recovered])
    append(KEYS_STREAM, [codec.decode(e) for e in setup if e.stream_id == KEYS_STREAM])
    mine = destinations_of([e for e in setup if e.stream_id != KEYS_STREAM])
    theirs = destinations_of(store.read_stream(codec.SETTINGS_STREAM))
    changes: list[Event] = []
    for d in mine.by_name.values():
        if d.name in theirs.by_name:
            changes.append(DestinationRemoved(job_id=recovery_id, name=d.name))
        # What an addition records; the rest (its pause, its uploads' stream) starts anew here.
        fields = {k: v for k, v in d.model_dump().items() if k in DestinationAdded.model_fields}
        fields.pop("job_id", None)
        changes.append(DestinationAdded(job_id=recovery_id, **fields))
    append(codec.SETTINGS_STREAM, changes)
    return tuple(credentials_missing(settings, store.read_stream(codec.SETTINGS_STREAM)))
