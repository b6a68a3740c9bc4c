"""Rebuild every read model from the first event of the log.

The read models are disposable: whatever happened to them (a bug fixed in a fold, a table added, a
restore of the database from an old copy), replaying the log gives the rows the live handler would
have written. The rebuild happens in one write transaction, so readers see the old rows until the
new ones are complete, and appends wait for it rather than interleave with it.

Most of the time goes into the domain's own `evolve`, so a large log is split between processes by
job: each reads the whole log, and parses and folds the events of its share of the jobs. The
process that holds the transaction takes a smaller share, and writes its rows while the others
are still folding theirs.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select

from capsule.orchestrator import codec
from capsule.orchestrator.db import database_errors, for_reading, make_engine
from capsule.orchestrator.eventstore import EventStore, StoredEvent, events
from capsule.orchestrator.projections.projector import Projector
from capsule.orchestrator.projections.rows import Row
from capsule.orchestrator.projections.scan import Scan
from capsule.orchestrator.projections.tables import (
    PROJECTIONS,
    backup_dest_objects,
    backup_settings,
    drill_proofs,
    jobs,
    restore_jobs,
    schedule_runs,
    set_checkpoint,
    snapshot_marks,
    snapshots,
)

INSERT_BATCH = 10_000
MAX_WORKERS = 4
# Starting a process and importing Capsule in it takes about a second: below this, one process wins.
EVENTS_PER_WORKER = 100_000
BUCKETS = 64
# Writing the rows is the last thing that cannot be shared; the writer folds this much less.
WRITER_SHARE = 0.85


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """How many events a replay applied, how long it took in seconds, and in how many processes."""

    events: int
    seconds: float
    workers: int = 1


@dataclass(frozen=True, slots=True)
class _Part:
    """The jobs whose id hashes into buckets [low, high), to fold from the log up to `until`."""

    low: int
    high: int
    until: int
    batch: int

    def holds(self, stream_id: str) -> bool:
        # By job id, not stream, so that all of a job's rows are folded in one place; with a stable
        # hash, since every process must agree (Python's own hash of a str differs between processes).
        job = codec.job_of_stream(stream_id)
        if job is None:
            # The log's own history (a repair's recovered snapshots) is short: the first part folds it.
            # So are the settings, the schedules' runs and the snapshots' tags and forgetting.
            return self.low == 0 and (
                codec.is_log_stream(stream_id)
                or codec.is_settings_stream(stream_id)
                or codec.is_schedule_stream(stream_id)
                or codec.is_snapshot_stream(stream_id)
                or codec.is_destination_stream(stream_id)
            )
        return self.low <= zlib.crc32(job[1].encode()) % BUCKETS < self.high


@dataclass(frozen=True, slots=True)
class _Share:
    """What one part folded: rows by table and key, and the position that wrote each snapshot row."""

    rows: dict[str, dict[str, Row]]
    snapshot_positions: dict[str, int]
    events: int


class _Log:
    """Replay starts from empty tables; it reads a stream again only for a job it let go of."""

    def __init__(self, conn: Connection, store: EventStore) -> None:
        self._conn = conn
        self._store = store

    def row(self, table: str, key: str) -> Row | None:
        return None

    def events_before(self, stream_id: str, version: int) -> list[StoredEvent]:
        stream = self._store.read_stream(stream_id, conn=self._conn)
        return [e for e in stream if e.version < version]


def replay(
    engine: Engine, store: EventStore, batch: int = 10_000, *, workers: int | None = None
) -> ReplayReport:
    """Empty the read models, apply every event of the log in position order, and say how long it took.

    Events are decoded with `codec.upcasters()`, the registry `store` must read with too. `workers`
    is how many processes fold (by default one per core, up to 4, when the log is large enough to
    pay for them). While it runs, appends wait: it is for maintenance, not for a busy afternoon.
    """
    if batch < 1:
        raise ValueError(f"a batch is 1 event or more, not {batch}")
    if workers is not None and workers < 1:
        raise ValueError(f"a replay needs 1 worker or more, not {workers}")
    started = time.perf_counter()
    with _collector_paused(), database_errors(engine), engine.begin() as conn:
        _lock_log(conn)
        for table in PROJECTIONS:
            # DELETE, not TRUNCATE: on PostgreSQL, TRUNCATE would make every reader of the read
            # models wait for the whole replay instead of reading the old rows meanwhile.
            conn.execute(table.delete())
        until = int(conn.execute(select(func.coalesce(func.max(events.c.position), 0))).scalar_one())
        count = workers if workers is not None else _default_workers(engine, until)
        mine, *theirs = _parts(count, until, batch)
        writer = _Writer(conn)
        if not theirs:
            read = writer.write(_fold(conn, store, mine))
        else:
            # Every process that appends loads this module with the read models: only a replay
            # of a large log starts processes, and loads what starts them.
            import multiprocessing  # noqa: PLC0415
            from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

            url = engine.url.render_as_string(hide_password=False)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(len(theirs), mp_context=context) as pool:
                others = [pool.submit(_fold_elsewhere, url, part) for part in theirs]
                read = writer.write(_fold(conn, store, mine))
                for other in others:
                    writer.write(other.result())
        set_checkpoint(conn, until)
    return ReplayReport(events=read, seconds=time.perf_counter() - started, workers=count)


def _parts(count: int, until: int, batch: int) -> list[_Part]:
    if count == 1:
        return [_Part(0, BUCKETS, until, batch)]
    first = round(BUCKETS / count * WRITER_SHARE)
    bounds = [0, first, *(first + (BUCKETS - first) * n // (count - 1) for n in range(1, count))]
    return [_Part(low, high, until, batch) for low, high in itertools.pairwise(bounds)]


def _fold(conn: Connection, store: EventStore, part: _Part) -> _Share:
    projector = Projector(_Log(conn, store), keep_finished=False)
    scan = Scan(conn, codec.upcasters(), keep=part.holds)
    for page in scan.pages(part.until, part.batch):
        for stored in page:
            projector.apply(stored)
    return _Share(projector.rows, projector.snapshot_positions, scan.rows_read)


def _fold_elsewhere(url: str, part: _Part) -> _Share:
    """`_fold` in a worker process, on a connection of its own that only reads."""
    engine = make_engine(url)
    try:
        with _collector_paused(), database_errors(engine), for_reading(engine).connect() as conn:
            store = EventStore(engine, upcasters=codec.upcasters())
            return _fold(conn, store, part)
    finally:
        engine.dispose()


class _Writer:
    """Inserts the rows of each part as it arrives; the parts' jobs never overlap, their snapshots may."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._snapshots: dict[str, int] = {}
        self._proofs: dict[str, int] = {}

    def write(self, share: _Share) -> int:
        """Insert the rows of `share`; return how many events it read."""
        # A destination's objects come from its one stream, which one part holds whole.
        for table in (
            jobs,
            restore_jobs,
            backup_settings,
            schedule_runs,
            snapshot_marks,
            backup_dest_objects,
        ):
            self._insert(table, list(share.rows[table.name].values()))
        fresh = []
        for key, row in share.rows[snapshots.name].items():
            position = share.snapshot_positions[key]
            if key in self._snapshots:
                # Two jobs committed a snapshot of one id: the later commit wins, as in one process.
                if self._snapshots[key] > position:
                    continue
                self._conn.execute(delete(snapshots).where(snapshots.c.snapshot_id == key))
            self._snapshots[key] = position
            fresh.append(row)
        self._insert(snapshots, fresh)
        self._insert(drill_proofs, self._latest(share.rows[drill_proofs.name]))
        return share.events

    def _latest(self, rows: dict[str, Row]) -> list[Row]:
        """The proofs of `rows` later than those of parts written before; those go."""
        fresh = []
        for kind, row in rows.items():
            held = self._proofs.get(kind)
            if held is not None:
                if held > row["last_position"]:
                    continue
                self._conn.execute(delete(drill_proofs).where(drill_proofs.c.kind == kind))
            self._proofs[kind] = row["last_position"]
            fresh.append(row)
        return fresh

    def _insert(self, table: Table, rows: list[Row]) -> None:
        # In chunks, so that the driver's own copy of the parameters stays small.
        for start in range(0, len(rows), INSERT_BATCH):
            self._conn.execute(insert(table), rows[start : start + INSERT_BATCH])


def _default_workers(engine: Engine, until: int) -> int:
    database = engine.url.database or ""
    in_memory = engine.url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or engine.url.query.get("mode") == "memory"
    )
    if in_memory:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS, until // EVENTS_PER_WORKER))


@contextmanager
def _collector_paused() -> Iterator[None]:
    # Folding makes no reference cycles, and with a million live objects the collector's passes
    # would cost a good share of the time (see docs/performance.md, "Replay with the garbage
    # collector paused").
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _lock_log(conn: Connection) -> None:
    # On SQLite the transaction already holds the write lock; on PostgreSQL this is the lock every
    # append takes, so none can slip in between the read and the checkpoint.
    if conn.dialect.name == "postgresql":
        table = conn.dialect.identifier_preparer.format_table(events)
        conn.exec_driver_sql(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
