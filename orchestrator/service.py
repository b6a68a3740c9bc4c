"""The service: Capsule running by itself in one process (`capsule serve`, `capsule scheduler`).

It holds, side by side:
- A tick loop. Every `tick_seconds`, and just after each whole minute (cron's resolution: a run
  due at 10:00 starts at 10:00, not a tick later), it reads the settings and calls each ticker with
  the time and the settings. The scheduler is the first ticker; others are added with
  `add_ticker`. A ticker that raises is logged and noted in the health record, and the loop goes on.
- The embedded worker when no broker is configured (`Dispatcher.worker`): its threads run the steps
  of every job, and its recovery sweep at start finishes the jobs an earlier process left (taking
  over those whose process is gone). With a broker, `capsule worker` processes run them instead.
- A health record (`health()`) the HTTP front door reads: the tick loop and the worker alive, the
  time of the last tick and its error.

First start: a kind (database, files) with no snapshot and no unfinished backup is backed up at
once, then on schedule. The check and the request share one write transaction of the event log (on
SQLite one writer at a time, on PostgreSQL the log's append lock), so two services starting
together start one such backup, not two. A kind whose source does not exist (no images folder) is
reported and left out; the service still starts.

Stopping (`stop`): no tick starts any more and the worker takes no new message; a running step has
a grace period to end, after which it is recorded as interrupted (as Ctrl-C records it) and the
next start, or any worker, finishes it. The log holds every job, so nothing is lost.

The clock is given (`clock`): tests call `tick()` with their own time.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog
from sqlalchemy import Connection, text

from capsule.domain.backup_job import sources_of
from capsule.domain.settings import BackupSettings, from_values
from capsule.orchestrator import projections
from capsule.orchestrator.actors import Dispatcher, describe
from capsule.orchestrator.jobrunner import interrupt_own_steps
from capsule.orchestrator.runtime import Runtime, utc_now
from capsule.orchestrator.scheduler import Fired, Scheduler
from capsule.orchestrator.steps import release_own_locks

if TYPE_CHECKING:
    import dramatiq

log = structlog.get_logger(__name__)

TICK_SECONDS = 5.0
"""Between ticks when no whole minute comes sooner: a tick reads two small tables, so an idle
service costs next to nothing, and a changed setting is seen within this long."""
STALE_TICKS = 3
"""A tick loop that has not ticked for this many periods is reported dead."""
AFTER_MINUTE = 0.05
"""Seconds past a whole minute at which the loop wakes, so that a run due then is due already."""
WORKER_POLL_MS = 1000
"""How often an idle worker thread wakes to look whether it should stop; a message wakes it at once."""
ACTOR = "system:service"
FIRST_KINDS = ("database", "files")
Ticker = Callable[[datetime, BackupSettings], object]


@dataclass(frozen=True)
class Health:
    """What `GET /healthz` answers."""

    started_at: datetime
    scheduler_alive: bool
    worker_alive: bool | None
    """None: this process runs no worker (distributed mode: `capsule worker` processes do)."""
    last_tick_at: datetime | None
    last_tick_error: str | None

    @property
    def healthy(self) -> bool:
        return self.scheduler_alive and self.worker_alive is not False


@dataclass(frozen=True)
class FirstBackup:
    """A kind with no snapshot yet, backed up at start (`job_id`) or left out (`missing`)."""

    kind: str
    source: str
    job_id: str | None
    missing: bool = False
    """Its source does not exist: nothing to back up until it does."""


@dataclass(frozen=True)
class Stopped:
    """How the service stopped."""

    signal: str
    grace_seconds: float
    interrupted: list[str]
    """`<type> job <id>` of each step still running at the end of the grace, recorded as interrupted."""


class FrontDoor(Protocol):
    """The HTTP server of a service (`capsule.api.http`): its address is bound before anything
    starts, so that a port in use is refused first; it answers while `serving` runs."""

    url: str

    def serving(self, service: Service) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


def current_settings(runtime: Runtime) -> BackupSettings:
    """The settings document as the `backup_settings` projection holds it now."""
    row = projections.settings_row(runtime.engine)
    return from_values(json.loads(row["changed_values"]) if row else {})


class Service:
    """The tick loop, the embedded worker (or none) and the health record of one process."""

    def __init__(
        self,
        runtime: Runtime,
        dispatcher: Dispatcher,
        *,
        sources: dict[str, Path],
        machine_zone: str,
        embedded_worker: bool,
        clock: Callable[[], datetime] = utc_now,
        tick_seconds: float = TICK_SECONDS,
        worker_threads: int = 2,
    ) -> None:
        self.runtime = runtime
        self.dispatcher = dispatcher
        self.paths = sources
        self.embedded_worker = embedded_worker
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.worker_threads = worker_threads
        self.started_at = clock()
        self.scheduler = Scheduler(
            runtime, {k: str(p) for k, p in sources.items()}, machine_zone, started_at=self.started_at
        )
        self._tickers: list[Ticker] = [self.run_schedules]
        self._stopping = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._worker: dramatiq.Worker | None = None
        self._last_tick_at: datetime | None = None
        self._last_tick_monotonic: float | None = None
        self._last_tick_error: str | None = None

    def add_ticker(self, ticker: Ticker) -> None:
        """Call `ticker(now, settings)` at every tick, after those added before it."""
        self._tickers.append(ticker)

    # ---- ticks -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Read the settings and call every ticker once; a ticker that raises does not stop the others."""
        now = self.clock()
        errors = []
        try:
            settings = current_settings(self.runtime)
        except Exception as e:  # the log may be unreachable for a while: the next tick tries again
            log.warning("a tick could not read the settings", error=describe(e))
            errors.append(f"reading the settings: {describe(e)}")
        else:
            for ticker in list(self._tickers):
                name = getattr(ticker, "__name__", type(ticker).__name__)
                try:
                    ticker(now, settings)
                except Exception as e:
                    log.warning("a ticker failed", ticker=name, error=describe(e))
                    errors.append(f"{name}: {describe(e)}")
        self._last_tick_at, self._last_tick_monotonic = now, time.monotonic()
        self._last_tick_error = "; ".join(errors) or None

    def run_schedules(self, now: datetime, settings: BackupSettings) -> list[Fired]:
        """The scheduler's ticker: record the runs owed at `now` and send each new job its first step."""
        fired = self.scheduler.tick(now, settings)
        for run in fired:
            if not run.coalesced:
                self.dispatcher.enqueue_next("backup", run.job_id)
        return fired

    def _pause(self) -> float:
        """Seconds to the next tick: `tick_seconds`, or less to wake just after the next whole minute."""
        now = self.clock()
        to_minute = 60 - now.second - now.microsecond / 1e6 + AFTER_MINUTE
        return min(self.tick_seconds, to_minute)

    def _loop(self) -> None:
        while not self._stopping.wait(self._pause()):
            self.tick()

    # ---- first start -----------------------------------------------------------------------

    def first_backups(self) -> list[FirstBackup]:
        """Back up now each kind that has no snapshot and no unfinished backup; report those whose
        source is missing. Kinds that have a snapshot are not listed."""
        found = []
        for kind in FIRST_KINDS:
            first = self._first_backup(kind)
            if first is not None:
                found.append(first)
        return found

    def _first_backup(self, kind: str) -> FirstBackup | None:
        path = self.paths[kind]
        source = str(path)
        store = self.runtime.store
        with store.transaction() as conn:
            _lock_log(conn)
            if projections.list_snapshots(conn, 1, kind) or _unfinished_backup_of(conn, source):
                return None
            if not (path.is_file() if kind == "database" else path.is_dir()):
                return FirstBackup(kind, source, None, missing=True)
            job_id = self.runtime.request_backup(
                source=source, kind=kind, actor=ACTOR, conn=conn, causation_id=f"first-{kind}"
            )
        log.info("first backup of a kind with no snapshot", kind=kind, job_id=job_id)
        self.dispatcher.enqueue_next("backup", job_id)
        return FirstBackup(kind, source, job_id)

    # ---- running and stopping ------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[list[FirstBackup]]:
        """Start the worker (if embedded), the first backups and the tick loop; yield the first
        backups. Leaving the block stops what still runs, waiting for a running step to end: after
        a `stop` that interrupted one, the process exits instead (`os._exit`)."""
        with ExitStack() as stack:
            if self.embedded_worker:
                sweep = self.runtime.settings.sweep_seconds
                poll = WORKER_POLL_MS
                worker = self.dispatcher.worker(self.worker_threads, sweep_every=sweep, poll_ms=poll)
                self._worker = stack.enter_context(worker)
            stack.callback(self._stop_ticks)
            first = self.first_backups()
            self.tick()  # the first, before anyone asks: the health record is whole from the start
            self._loop_thread = threading.Thread(target=self._loop, name="ticks", daemon=True)
            self._loop_thread.start()
            yield first

    def _stop_ticks(self) -> None:
        self._stopping.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=60)

    def stop(self, signal: str, grace_seconds: float) -> Stopped:
        """Take no new work; wait up to `grace_seconds` for a running step, then record it interrupted
        and release this process's repository locks. `interrupted` empty: nothing was cut short."""
        self._stop_ticks()
        interrupted: list[str] = []
        if self._worker is not None:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: wait no longer
                self._worker.stop(timeout=int(grace_seconds * 1000))
            if any(t.is_alive() for t in self._worker.workers):
                self.dispatcher.stop_starting()  # no attempt starts after the ones recorded below
                interrupted = interrupt_own_steps(self.runtime, signal)
                release_own_locks(self.runtime.settings)
        log.info("service stopped", signal=signal, interrupted=interrupted)
        return Stopped(signal, grace_seconds, interrupted)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def health(self) -> Health:
        """The tick loop alive and ticking, the worker's threads alive, the last tick."""
        loop = self._loop_thread
        last = self._last_tick_monotonic
        ticking = last is not None and time.monotonic() - last <= STALE_TICKS * self.tick_seconds
        alive = loop is not None and loop.is_alive() and not self.stopping and ticking
        worker_alive = None
        if self.embedded_worker:
            worker = self._worker
            worker_alive = (
                worker is not None and not self.stopping and all(t.is_alive() for t in worker.workers)
            )
        return Health(self.started_at, alive, worker_alive, self._last_tick_at, self._last_tick_error)


def _lock_log(conn: Connection) -> None:
    """Two services starting together must not both see a kind without a backup. On SQLite the write
    transaction already admits one at a time; PostgreSQL needs the log's append lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))


def _unfinished_backup_of(conn: Connection, source: str) -> bool:
    for job_id, job_type in projections.unfinished_jobs(conn):
        row = projections.get_job(conn, job_id) if job_type == "backup" else None
        if row is not None and source in sources_of(str(row["source"])):
            return True
    return False
