"""Uploads: the local repository copied to one destination, as the step `upload:<name>` of every
backup job and as `capsule sync`; the event log keeps what each destination holds.

What a destination holds is the `backup_dest_objects` read model, fed by the events of its stream
(`destination-<id>`): objects sent, found or missed by a listing, deleted. An upload sends only the
objects the local repository has and the log does not show there, so the destination is not listed
(a listing costs Drive one request per thousand objects): `capsule sync` lists it and records what
it finds. The first upload to a destination the log knows nothing of lists it first, as sync does.

Safe to run twice, or after its process died at any instant:
- the objects sent are recorded in batches (BATCH_OBJECTS objects or BATCH_BYTES bytes an event),
  so an attempt that dies sends again at most one batch; every object is written whole (the storage
  contract), so sending one twice leaves it as it was;
- a resumable Drive upload's session is recorded (sealed: its address grants upload access), so
  the next attempt goes on with it from the offset Drive reports and sends at most one chunk again;
- deletions come after the sends, and only of objects the log shows Capsule sent there and a prune
  or a forget deleted from the local repository, and the local repository does not hold again.
  An object merely missing from the local repository is never deleted: the local disk may be the
  one that died.

A destination that fails never fails the backup: the step completes with the failure in its result
and the destination's stream records it (`capsule status` says which destination is behind and
why). A destination that keeps refusing uploads for its rate limit (Drive's 750 GB a day) is paused
for CAPSULE_UPLOAD_PAUSE_SECONDS: later backups leave it out until then, and the first one after
catches up.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog

from capsule.adapters.errors import DestinationNeedsConsent, RateLimited
from capsule.adapters.repository.backends.storage import Backend, Kind
from capsule.adapters.repository.copy import ORDER, copy_repository
from capsule.domain.destinations import Destination
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.events import (
    DestinationObject,
    DestinationObjectsDeleted,
    DestinationObjectsListed,
    DestinationObjectsUploaded,
    DestinationUploadFailed,
    Event,
    UploadSessionClosed,
    UploadSessionOpened,
)
from capsule.orchestrator import projections

if TYPE_CHECKING:
    from capsule.orchestrator.eventstore import EventStore, StoredEvent
    from capsule.orchestrator.runtime import Runtime
    from capsule.orchestrator.secrets import SecretBox
    from capsule.orchestrator.settings import Settings

log = structlog.get_logger(__name__)

BATCH_OBJECTS = 64
BATCH_BYTES = 32 * 1024 * 1024
"""Two default packs: what a worker killed mid-upload may send again whole, beside the pack in
flight, which resumes from its last chunk. Smaller batches would only lengthen the log."""
DELETE_ORDER: tuple[Kind, ...] = ("snapshots", "index", "data")
"""Snapshots go before the index files and packs they need, so the copy stays whole meanwhile."""

Progress = Callable[[int, int], None]


@dataclass
class Uploaded:
    """What one upload did to one destination, or why it did not."""

    destination: str
    status: str = "uploaded"
    """`uploaded`, `failed`, `paused` (rate limited: waits until `paused_until`) or `skipped`."""
    sent: int = 0
    sent_bytes: int = 0
    skipped: int = 0
    deleted: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    category: Category | None = None
    paused_until: datetime | None = None
    remote: Backend | None = field(default=None, repr=False, compare=False)
    """The destination's backend, for what the caller does next in the same operation (`hold`)."""

    @property
    def ok(self) -> bool:
        return self.status in ("uploaded", "skipped")

    def as_result(self) -> dict[str, Any]:
        """The step's result: what the job's log keeps of the upload."""
        result: dict[str, Any] = {
            "destination": self.destination,
            "status": self.status,
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "skipped": self.skipped,
            "deleted": self.deleted,
        }
        if self.error is not None:
            result["error"] = self.error
            result["category"] = self.category.value if self.category else None
        if self.paused_until is not None:
            result["paused_until"] = self.paused_until.isoformat()
        return result


def stream_of(destination: Destination) -> str:
    return destination.stream_id


class Recorder:
    """Records in the destination's stream what an upload did, a batch of objects at a time."""

    def __init__(self, runtime: Runtime, destination: Destination, job_id: str, actor: str) -> None:
        self.runtime, self.destination, self.job_id, self.actor = runtime, destination, job_id, actor
        self._pending: list[DestinationObject] = []
        self._bytes = 0

    def append(self, *events: Event) -> None:
        self.runtime.append_to(
            stream_of(self.destination), list(events), actor=self.actor, correlation_id=self.job_id
        )

    def sent(self, kind: str, name: str, size: int) -> None:
        self._pending.append(DestinationObject(kind=kind, name=name, size=size))
        self._bytes += size
        if len(self._pending) >= BATCH_OBJECTS or self._bytes >= BATCH_BYTES:
            self.flush()

    def _caught_up(self) -> bool:
        """The stream's last event already says the destination holds all: a run that sent and
        deleted nothing leaves the log as it was (so a copy of the log need not be written again)."""
        stream = stream_of(self.destination)
        version = self.runtime.store.stream_version(stream)
        last = self.runtime.store.read_stream(stream, after_version=version - 1) if version else []
        return (
            bool(last) and last[-1].type == "DestinationObjectsUploaded" and bool(last[-1].data.get("done"))
        )

    def flush(self, *, done: bool = False) -> None:
        """Record the objects sent since the last batch; `done`: the destination now holds all."""
        if not self._pending and (not done or self._caught_up()):
            return
        name = self.destination.name
        objects = tuple(self._pending)
        self._pending, self._bytes = [], 0
        self.append(
            DestinationObjectsUploaded(job_id=self.job_id, destination=name, objects=objects, done=done)
        )


class LoggedSessions:
    """The `UploadSessions` of a Drive destination, kept in its stream: a session's address is
    sealed with the secrets box before it is recorded, and opened only for the backend."""

    def __init__(self, recorder: Recorder, box: SecretBox) -> None:
        self.recorder, self.box = recorder, box
        self._sealed: dict[tuple[str, str], str] = {}
        self.recording = True
        """False once the upload is over: a later write through the same backend (the event log's
        copy) keeps no session, so it does not move the log it copies."""
        for row in _since_last_complete_copy(recorder.runtime.store, stream_of(recorder.destination)):
            if row.type == UploadSessionOpened.type_name:
                self._sealed[(row.data["kind"], row.data["name"])] = row.data["uri"]
            elif row.type == UploadSessionClosed.type_name:
                self._sealed.pop((row.data["kind"], row.data["name"]), None)

    def _purpose(self, kind: str, name: str) -> str:
        return f"destinations.{self.recorder.destination.name}.upload.{kind}.{name}"

    def load(self, kind: str, name: str) -> str | None:
        sealed = self._sealed.get((kind, name)) if self.recording else None
        if sealed is None:
            return None
        try:
            return self.box.open(self._purpose(kind, name), sealed)
        except CapsuleError:
            return None  # a session sealed under another key: the upload starts over

    def save(self, kind: str, name: str, uri: str, size: int) -> None:
        if not self.recording:
            return
        sealed = self.box.seal(self._purpose(kind, name), uri)
        r = self.recorder
        r.append(
            UploadSessionOpened(
                job_id=r.job_id, destination=r.destination.name, kind=kind, name=name, size=size, uri=sealed
            )
        )
        self._sealed[(kind, name)] = sealed

    def clear(self, kind: str, name: str) -> None:
        if not self.recording:
            return
        if self._sealed.pop((kind, name), None) is None:
            return
        r = self.recorder
        r.append(UploadSessionClosed(job_id=r.job_id, destination=r.destination.name, kind=kind, name=name))


def _since_last_complete_copy(store: EventStore, stream: str) -> list[StoredEvent]:
    """The sessions opened and closed in `stream` since the last upload that left the destination
    holding every local object, in order. A session opened before it is not worth resuming: its
    object was on the destination then. Read back from the end, a page at a time: the stream grows
    by two events a pack sent, and only its end matters."""
    types = (
        UploadSessionOpened.type_name,
        UploadSessionClosed.type_name,
        DestinationObjectsUploaded.type_name,
    )
    tail: list[StoredEvent] = []
    before: int | None = None
    while page := store.read_stream_back(stream, types, before):
        for row in page:
            if row.type == DestinationObjectsUploaded.type_name:
                if row.data.get("done"):
                    return tail[::-1]
            else:
                tail.append(row)
        before = page[-1].version
    return tail[::-1]


def held(runtime: Runtime, destination: Destination) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects the log shows on `destination` now (not deleted, not found missing). Those it
    deleted stay in the read model for the audit's sake and are left out by the query: a year of
    hourly copies and daily prunes leaves tens of thousands."""
    return projections.destination_objects(runtime.engine, destination.added_id, held_only=True)


def deleted_locally(runtime: Runtime) -> set[tuple[str, str]]:
    """(kind, name) of every object the log shows a prune or a forget deleted from the local
    repository: forgotten snapshots, the packs prunes deleted, the index files prunes replaced."""
    from capsule.domain import prune_job  # noqa: PLC0415

    gone: set[tuple[str, str]] = {
        ("snapshots", sid)
        for sid, mark in projections.snapshot_marks_of(runtime.engine).items()
        if mark.get("forgotten_at") is not None
    }
    for row in projections.list_jobs(runtime.engine, limit=1_000_000, job_type="prune"):
        state = runtime.load("prune", str(row["job_id"])).state
        results = {s.name: s.result for s in state.steps if s.result is not None}
        deleted = results.get(prune_job.DELETE)
        if isinstance(deleted, dict) and isinstance(deleted.get("result"), dict):
            gone |= {("data", str(p)) for p in deleted["result"].get("deleted") or []}  # type: ignore[union-attr]
        plan, index = results.get(prune_job.PLAN_STEP), results.get(prune_job.INDEX)
        if isinstance(plan, dict) and isinstance(plan.get("plan"), dict) and isinstance(index, dict):
            written = set(index.get("index_files") or [])  # type: ignore[arg-type]
            old = plan["plan"].get("index_files") or []  # type: ignore[union-attr]
            gone |= {("index", str(n)) for n in old if n not in written}  # type: ignore[union-attr]
    return gone


def _local_names(local: Backend) -> dict[Kind, set[str]]:
    return {
        kind: ({"config"} if local.exists("config", "config") else set())
        if kind == "config"
        else set(local.list(kind))
        for kind in ORDER
    }


class _ListsOnce(Protocol):
    def one_listing(self) -> AbstractContextManager[None]: ...


def _one_listing(remote: Backend, hold: ExitStack) -> None:
    """Have `remote` answer from one listing of it until `hold` closes, if it can (a Drive folder,
    where each listing is a request: the reconciliation lists every kind). A folder lists itself."""
    one_listing = getattr(remote, "one_listing", None)
    if callable(one_listing):
        hold.enter_context(one_listing())


def reconcile(
    recorder: Recorder, local: Backend, remote: Backend, known: dict[tuple[str, str], dict[str, Any]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """List `remote`, record what it holds that the log did not know (found) and what the log
    knew that it lacks (lost); return what it holds by the log's reckoning now."""
    listed: set[tuple[str, str]] = set()
    for kind in ORDER:
        if kind == "config":
            listed |= {("config", "config")} if remote.exists("config", "config") else set()
        else:
            listed |= {(kind, name) for name in remote.list(kind)}

    def size(kind: str, name: str) -> int:
        try:
            return local.size(kind, name)  # type: ignore[arg-type]
        except CapsuleError:
            return 0  # not held locally: its size is not worth a request to the destination

    found = tuple(DestinationObject(kind=k, name=n, size=size(k, n)) for k, n in sorted(listed - set(known)))
    lost = tuple(
        DestinationObject(kind=k, name=n, size=int(known[(k, n)]["size"]))
        for k, n in sorted(set(known) - listed)
    )
    if found or lost:
        recorder.append(
            DestinationObjectsListed(
                job_id=recorder.job_id, destination=recorder.destination.name, found=found, lost=lost
            )
        )
    now_held = {key: row for key, row in known.items() if key in listed}
    now_held |= {(o.kind, o.name): {"origin": "found", "size": o.size} for o in found}
    return now_held


def delete_pruned(
    recorder: Recorder,
    local: Backend,
    remote: Backend,
    known: dict[tuple[str, str], dict[str, Any]],
    local_names: dict[Kind, set[str]],
) -> int:
    """Delete on `remote` what Capsule sent there and a prune or forget deleted locally; return how many."""
    order: dict[str, int] = {kind: n for n, kind in enumerate(DELETE_ORDER)}
    missing = [
        (cast("Kind", kind), name)
        for (kind, name), row in known.items()
        if kind in order
        and row.get("origin") == "sent"
        and name not in local_names.get(cast("Kind", kind), set())
    ]
    # Only then is it worth reading why they went (every prune job of the log): usually nothing
    # was deleted here since the last copy.
    gone = deleted_locally(recorder.runtime) if missing else set()
    doomed = sorted((key for key in missing if key in gone), key=lambda key: (order[key[0]], key[1]))
    deleted: list[DestinationObject] = []
    try:
        for kind, name in doomed:
            remote.remove(kind, name)
            deleted.append(DestinationObject(kind=kind, name=name, size=int(known[(kind, name)]["size"])))
    finally:
        if deleted:
            recorder.append(
                DestinationObjectsDeleted(
                    job_id=recorder.job_id, destination=recorder.destination.name, objects=tuple(deleted)
                )
            )
    return len(deleted)


def upload(
    settings: Settings,
    runtime: Runtime,
    name: str,
    job_id: str,
    *,
    actor: str,
    now: datetime,
    progress: Progress | None = None,
    list_first: bool = False,
    paused_too: bool = False,
    hold: ExitStack | None = None,
) -> Uploaded:
    """Send destination `name` what it lacks, then delete what the log allows; record it all.

    Errors of the destination are returned in the outcome (and recorded), never raised: a
    destination that fails leaves the local backup as it is. `list_first`: list the destination
    and record what it holds before sending (`capsule sync`); it is also done when the log
    knows nothing of the destination yet. `paused_too`: try a paused destination all the same (a
    person asked for it by name). `hold`: the destination's backend is kept for the caller (in the
    outcome's `remote`) until `hold` closes, with its listing when one was taken (`capsule sync`
    writes the event log's copy through it)."""
    from capsule.adapters.repository.backends import open_backend  # noqa: PLC0415
    from capsule.adapters.repository.lock import locked  # noqa: PLC0415
    from capsule.orchestrator.destinations import destinations_of, open_backend_of, settings_events  # noqa: PLC0415
    from capsule.orchestrator.secrets import box_in  # noqa: PLC0415

    destination = destinations_of(settings_events(runtime)).by_name.get(name)
    if destination is None or (not destination.enabled and not paused_too):
        why = "removed" if destination is None else "turned off"
        return Uploaded(name, status="skipped", error=f"the destination was {why} since the backup began")
    if destination.paused_at(now) and not paused_too:
        return Uploaded(
            name, status="paused", paused_until=destination.paused_until, error=destination.pause_reason
        )
    recorder = Recorder(runtime, destination, job_id, actor)
    outcome = Uploaded(name)
    local = open_backend(settings.repository)
    own_hold = ExitStack()
    try:
        with own_hold, locked(local, "upload", timeout=settings.lock_wait_seconds, reading=True):
            sessions = (
                LoggedSessions(recorder, box_in(settings.home)) if destination.kind == "gdrive" else None
            )
            remote = open_backend_of(settings, destination, sessions=sessions)
            known = held(runtime, destination)
            if list_first or not runtime.store.stream_version(stream_of(destination)):
                _one_listing(remote, hold if hold is not None else own_hold)
                known = reconcile(recorder, local, remote, known)
            have: dict[Kind, set[str]] = {}
            for kind, object_name in known:
                have.setdefault(kind, set()).add(object_name)  # type: ignore[arg-type]
            try:
                counts = copy_repository(local, remote, on_sent=recorder.sent, progress=progress, have=have)
            finally:
                recorder.flush()
            outcome.sent, outcome.sent_bytes, outcome.skipped = counts.sent, counts.sent_bytes, counts.skipped
            outcome.sent_by_kind = dict(counts.by_kind)
            known = held(runtime, destination)
            outcome.deleted = delete_pruned(recorder, local, remote, known, _local_names(local))
            recorder.flush(done=True)
            if sessions is not None:
                sessions.recording = False
            if hold is not None:
                outcome.remote = remote
    except CapsuleError as e:
        return _failed(settings, recorder, outcome, e, now)
    except OSError as e:
        return _failed(settings, recorder, outcome, _unavailable(e), now)
    log.info(
        "uploaded",
        destination=name,
        sent=outcome.sent,
        sent_bytes=outcome.sent_bytes,
        deleted=outcome.deleted,
    )
    return outcome


def _unavailable(error: OSError) -> CapsuleError:
    from capsule.orchestrator.destinations import DestinationUnavailable  # noqa: PLC0415

    return DestinationUnavailable(f"the destination could not be written: {error.strerror or error}")


def _failed(
    settings: Settings, recorder: Recorder, outcome: Uploaded, error: CapsuleError, now: datetime
) -> Uploaded:
    name = recorder.destination.name
    outcome.status, outcome.error, outcome.category = "failed", str(error), error.category
    if isinstance(error, DestinationNeedsConsent):  # status and alerts say so until it is renewed
        from capsule.orchestrator.usecases.destinations import consent_reason, record_consent_needed  # noqa: PLC0415

        record_consent_needed(settings, name, consent_reason(error))
    elif isinstance(error, RateLimited):
        until = now + timedelta(seconds=settings.upload_pause_seconds)
        reason = "it kept refusing uploads for its rate limit (Google Drive's 750 GB a day)"
        from capsule.orchestrator.usecases.destinations import record_paused  # noqa: PLC0415

        record_paused(settings, name, until, reason, actor=recorder.actor)
        outcome.status, outcome.paused_until = "paused", until
    try:
        recorder.append(
            DestinationUploadFailed(
                job_id=recorder.job_id, destination=name, error=outcome.error or "", category=error.category
            )
        )
    except CapsuleError as e:  # the log itself failing is the job's problem, not this destination's
        log.warning("could not record the failed upload", destination=name, error=str(e))
    log.warning("upload failed", destination=name, error=outcome.error, status=outcome.status)
    return outcome
