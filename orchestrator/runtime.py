"""The job runtime: commands in, events appended, steps run by Dramatiq actors, jobs swept.

The event log is the only truth. A command is decided against the stream as it stands and appended
with the version it was decided on; a conflict means someone else appended first, so the command is
decided again. Queue messages carry ids only and are hints: an actor reads the log, does what the
log says is next (or nothing), and a recovery sweep re-enqueues whatever the queue lost.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import structlog
from sqlalchemy import Connection, text

from capsule.domain import backup_job, drill_job, prune_job, restore_job
from capsule.domain.backup_job import sources_of
from capsule.domain.commands import (
    Command,
    ReleaseBackup,
    RequestBackup,
    RequestDrill,
    RequestPrune,
    RequestRestore,
    RetryPolicy,
)
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.events import Event
from capsule.domain.jobs import FINISHED, JobState, next_action
from capsule.orchestrator import codec, projections
from capsule.orchestrator.db import default_event_store_url, make_engine
from capsule.orchestrator.errors import ConcurrencyConflict
from capsule.orchestrator.eventstore import (
    ChainKeyFile,
    ChainReport,
    EventStore,
    Metadata,
    create_schema,
    verify_chain,
)
from capsule.orchestrator.settings import Settings

log = structlog.get_logger(__name__)

JOB_TYPES: dict[str, ModuleType] = {
    "backup": backup_job,
    "restore": restore_job,
    "drill": drill_job,
    "prune": prune_job,
}
CONFLICT_RETRIES = 20


def utc_now() -> datetime:
    return datetime.now(UTC)


def person() -> str:
    """The actor for commands typed at this machine's terminal."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"person:{user}@{socket.gethostname()}"


SYSTEM = "system"


class JobNotFound(CapsuleError):
    """Raised when a job id names no job in the event log."""

    category = Category.NOT_FOUND


@dataclass(frozen=True)
class Loaded:
    """A job's state as its stream tells it, and the version it was read at."""

    job_type: str
    state: JobState
    version: int
    events: list[Event]


class Runtime:
    """Settings wired to the event store, the projections and a broker; the one place that appends."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = make_engine(settings.event_store_url or default_event_store_url(settings.home))
        self.chain_key = ChainKeyFile(settings.resolved_event_log_key_file)
        if not projections.schema_in_place(self.engine):
            create_schema(self.engine, chain_key=self.chain_key)
            projections.create_projection_schema(self.engine)
        self.store = EventStore(self.engine, upcasters=codec.upcasters(), chain_key=self.chain_key)
        self.handler = projections.ProjectionHandler()
        self.policy = RetryPolicy(
            max_attempts=settings.step_max_attempts,
            base_backoff=timedelta(seconds=settings.step_backoff_seconds),
            max_backoff=timedelta(
                seconds=max(settings.step_backoff_max_seconds, settings.step_backoff_seconds)
            ),
        )
        self.lease = timedelta(seconds=settings.step_lease_seconds)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        # Set after every append this process makes: a waiter re-reads the log when something
        # happened here, and otherwise only now and then (another process may append too).
        self._appended = threading.Condition()

    def close(self) -> None:
        self.engine.dispose()

    # ---- reading -------------------------------------------------------------------------

    def verify_log(self) -> ChainReport:
        """Check every event against its seal and the chain; `EventLogTampered` names the first miss."""
        return verify_chain(self.engine, self.chain_key)

    def load(self, job_type: str, job_id: str) -> Loaded:
        module = JOB_TYPES[job_type]
        stored = self.store.read_stream(module.stream_id(job_id))
        events = [codec.decode(s) for s in stored]
        state = module.replay(events)
        return Loaded(job_type, state, stored[-1].version if stored else 0, events)

    def job_type_of(self, job_id: str) -> str:
        for job_type, module in JOB_TYPES.items():
            if self.store.stream_version(module.stream_id(job_id)):
                return job_type
        raise JobNotFound(f"there is no job {job_id!r}; `capsule jobs` lists them")

    # ---- deciding and appending -----------------------------------------------------------

    def execute(
        self,
        job_type: str,
        job_id: str,
        make_command: Callable[[Loaded], Command | None],
        *,
        actor: str,
        causation_id: str | None = None,
    ) -> tuple[Loaded, list[Event]]:
        """Decide the command against the current stream and append its events; retry on conflict."""
        module = JOB_TYPES[job_type]
        stream = module.stream_id(job_id)
        for _ in range(CONFLICT_RETRIES):
            loaded = self.load(job_type, job_id)
            command = make_command(loaded)
            if command is None:
                return loaded, []
            new = module.decide(loaded.state, command)
            if not new:
                return loaded, []
            try:
                self.store.append(
                    stream,
                    loaded.version,
                    [codec.encode(e) for e in new],
                    Metadata(actor=actor, correlation_id=job_id, causation_id=causation_id),
                    handlers=[self.handler],
                )
            except ConcurrencyConflict:
                continue
            self._notify()
            state = loaded.state
            for event in new:
                state = module.evolve(state, event)
            return Loaded(job_type, state, loaded.version + len(new), [*loaded.events, *new]), new
        raise ConcurrencyConflict(stream, -1, None)

    def request_backup(
        self,
        *,
        source: str,
        kind: str = "database",
        full: bool = False,
        tags: tuple[str, ...] = (),
        actor: str,
        conn: Connection | None = None,
        causation_id: str | None = None,
    ) -> str:
        """Record a backup request; queue it behind a backup of the same source that has not finished.

        With `conn`, the request joins that transaction (the scheduler records its run beside it).
        """
        job_id = new_job_id()
        now = self.clock()
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.store.transaction())
            _serialise_requests(conn)
            active = projections.active_backup_for_source(conn, source, uploading_too=False)
            command = RequestBackup(
                job_id=job_id,
                now=now,
                kind=kind,
                source=source,
                full=full,
                tags=tags,
                active_job_id=active,
                destinations=self._upload_destinations(conn, now),
            )
            events = backup_job.decide(backup_job.initial_state(), command)
            self.store.append(
                backup_job.stream_id(job_id),
                0,
                [codec.encode(e) for e in events],
                Metadata(actor=actor, correlation_id=job_id, causation_id=causation_id),
                handlers=[self.handler],
                conn=conn,
            )
        self._notify()
        log.info("backup requested", job=job_id, source=source, queued_behind=active)
        return job_id

    def _upload_destinations(self, conn: Connection, now: datetime) -> tuple[str, ...]:
        """The destinations a backup requested at `now` uploads to: enabled, not waiting for
        consent, not paused for their rate limit."""
        from capsule.orchestrator.destinations import destinations_of  # noqa: PLC0415

        known = destinations_of(self.store.read_stream(codec.SETTINGS_STREAM, conn=conn))
        return tuple(
            d.name
            for d in known.by_name.values()
            if d.enabled and d.needs_consent is None and not d.paused_at(now)
        )

    def append_to(self, stream_id: str, events: list[Event], *, actor: str, correlation_id: str) -> None:
        """Append `events` at the end of `stream_id`, whatever its version (a stream of facts that
        any process may add to, such as a destination's), with the read models."""
        for _ in range(CONFLICT_RETRIES):
            version = self.store.stream_version(stream_id)
            try:
                self.store.append(
                    stream_id,
                    version,
                    [codec.encode(e) for e in events],
                    Metadata(actor=actor, correlation_id=correlation_id),
                    handlers=[self.handler],
                )
            except ConcurrencyConflict:
                continue
            self._notify()
            return
        raise ConcurrencyConflict(stream_id, -1, None)

    def request_restore(
        self,
        *,
        snapshot_id: str,
        target: str,
        force: bool = False,
        check: bool = False,
        include: tuple[str, ...] = (),
        from_other_source: bool = False,
        special_bits: bool = False,
        source: str | None = None,
        actor: str,
    ) -> str:
        job_id = new_job_id()
        command = RequestRestore(
            job_id=job_id,
            now=self.clock(),
            snapshot_id=snapshot_id,
            target=target,
            force=force,
            check=check,
            include=include,
            from_other_source=from_other_source,
            special_bits=special_bits,
            source=source,
        )
        self.execute("restore", job_id, lambda _: command, actor=actor)
        log.info("restore requested", job=job_id, snapshot=snapshot_id, target=target)
        return job_id

    def request_drill(
        self,
        *,
        database_source: str,
        files_source: str,
        actor: str,
        conn: Connection | None = None,
        causation_id: str | None = None,
    ) -> str:
        """Record a restore drill of the newest snapshots of these sources, sampling images as the
        settings say. With `conn`, the request joins that transaction (a schedule's run)."""
        job_id = new_job_id()
        command = RequestDrill(
            job_id=job_id,
            now=self.clock(),
            database_source=database_source,
            files_source=files_source,
            sample_files=self.settings.drill_sample_files,
            sample_percent=self.settings.drill_sample_percent,
        )
        events = drill_job.decide(drill_job.initial_state(), command)
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.store.transaction())
            self.store.append(
                drill_job.stream_id(job_id),
                0,
                [codec.encode(e) for e in events],
                Metadata(actor=actor, correlation_id=job_id, causation_id=causation_id),
                handlers=[self.handler],
                conn=conn,
            )
        self._notify()
        log.info("drill requested", job=job_id)
        return job_id

    def request_prune(self, *, repack_unused_percent: int, actor: str) -> str:
        """Record a prune of the repository, or return the id of the prune that has not finished:
        one runs at a time. The unfinished one is looked for in the transaction that appends, so
        that of two requests made at once only one starts a prune."""
        job_id = new_job_id()
        with self.store.transaction() as conn:
            _serialise_requests(conn)
            active = projections.active_prune(conn)
            command = RequestPrune(
                job_id=job_id,
                now=self.clock(),
                repack_unused_percent=repack_unused_percent,
                active_job_id=active,
            )
            events = prune_job.decide(prune_job.initial_state(), command)
            if events:
                self.store.append(
                    prune_job.stream_id(job_id),
                    0,
                    [codec.encode(e) for e in events],
                    Metadata(actor=actor, correlation_id=job_id),
                    handlers=[self.handler],
                    conn=conn,
                )
        if active is not None:
            log.info("prune joins the one not finished", job=active)
            return active
        self._notify()
        log.info("prune requested", job=job_id)
        return job_id

    def release_queued(self, source: str) -> list[str]:
        """Let start every backup queued behind one of `source`'s sources that no active backup
        shares a source with any more, oldest first; return their ids.

        Two backups of one source never run at once: a job released here counts as active for
        the ones after it, which wait for the next release.
        """
        # Reads go through the engine itself: on SQLite a plain connection would take the write lock.
        mine = set(sources_of(source))
        released = []
        for row in reversed(
            projections.list_jobs(self.engine, limit=10_000, status="queued", job_type="backup")
        ):
            job_id = str(row["job_id"])
            if not mine.intersection(sources_of(row["source"])):
                continue
            if (
                projections.active_backup_for_source(self.engine, row["source"], uploading_too=False)
                is not None
            ):
                continue  # a backup of kind `all` waits until none of its sources is being backed up
            _, new = self.execute(
                "backup",
                job_id,
                lambda _, q=job_id: ReleaseBackup(job_id=q, now=self.clock()),  # type: ignore[misc]
                actor=SYSTEM,
            )
            if new:
                released.append(job_id)
        return released

    # ---- waiting ---------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._appended:
            self._appended.notify_all()

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 0.5) -> Loaded:
        """Block until the job has finished; return its final state.

        Reading the log costs CPU that the job itself needs: it is read again when this process
        appended something, or after `poll` seconds for appends made by other processes.
        """
        job_type = self.job_type_of(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._appended:
                loaded = self.load(job_type, job_id)
                if loaded.state.status in FINISHED:
                    return loaded
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} has not finished after {timeout} s")
                self._appended.wait(poll)

    def unfinished(self) -> list[tuple[str, str]]:
        return [(j, t) for j, t in projections.unfinished_jobs(self.engine)]

    def next_steps(self) -> Iterator[tuple[str, str, Any]]:
        """(job type, job id, next action) of every unfinished job, for the recovery sweep."""
        now = self.clock()
        for job_id, job_type in self.unfinished():
            loaded = self.load(job_type, job_id)
            yield job_type, job_id, next_action(loaded.state, now)


def new_job_id() -> str:
    """Sortable by time, unique without coordination: a timestamp and random bits."""
    return f"{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def _serialise_requests(conn: Any) -> None:
    """Two requests for one source must not both see it idle; take the log's append lock first."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))


@contextmanager
def heartbeat(beat: Callable[[], bool], interval: float) -> Iterator[threading.Event]:
    """Call `beat` every `interval` seconds on a thread until the block ends or `beat` says False.

    The event it yields is set once a beat returned False: the attempt was lost to another worker.
    """
    stop = threading.Event()
    lost = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                if not beat():
                    lost.set()
                    return
            except Exception as e:  # a missed heartbeat is survivable: the lease is longer
                log.warning("heartbeat failed", error=str(e))

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
