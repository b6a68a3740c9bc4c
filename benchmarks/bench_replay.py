"""How fast `capsule replay` rebuilds the read models from a large event log.

    python3 -m benchmarks.bench_replay --events 1000000            # SQLite file in a temporary folder
    python3 -m benchmarks.bench_replay --events 100000 --url postgresql+psycopg://postgres@127.0.0.1/test

The log is made of realistic jobs, built from the domain's own event classes: backups that store
(with heartbeats), commit and complete; some that retry a failed attempt; some queued behind
another and released; in-place restores that stage with a safety copy and apply. Several jobs run
at once, so their events interleave as they do in a real log. The rows are inserted in large
transactions straight into the events table (the append path is measured by bench_orchestration);
only the replay is timed. On PostgreSQL the URL's database gets a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select

from capsule.domain.errors import Category
from capsule.domain.events import (
    BackupCompleted,
    BackupQueued,
    BackupReleased,
    BackupRequested,
    Event,
    RestoreCompleted,
    RestoreRequested,
    StepCompleted,
    StepFailed,
    StepProgressed,
    StepStarted,
)
from capsule.orchestrator import codec, projections
from capsule.orchestrator.db import make_engine
from capsule.orchestrator.eventstore import EventStore, Metadata, create_schema, events

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)
RUNNING_AT_ONCE = 4
INSERT_BATCH = 50_000
SOURCE = "/srv/pos/data/pos.db"


def backup(job_id: str, n: int, at: datetime) -> list[Event]:
    """A database backup: ~9 events, one in 20 retries its store step, one in 20 waits for another."""
    history: list[Event] = [
        BackupRequested(
            job_id=job_id, kind="database", source=SOURCE, full=False, tags=(), plan=("store", "commit")
        )
    ]
    if n % 20 == 7:
        history += [BackupQueued(job_id=job_id, behind_job_id=f"job-{n - 1}"), BackupReleased(job_id=job_id)]
    attempts = 2 if n % 20 == 3 else 1
    size = 1_073_741_824 + n * 4096
    for attempt in range(1, attempts + 1):
        history.append(started(job_id, "store", attempt, at))
        history += [progressed(job_id, "store", attempt, size * k // 4, size, at=at) for k in (1, 2, 3)]
        if attempt < attempts:
            history.append(
                StepFailed(
                    job_id=job_id,
                    step="store",
                    attempt=attempt,
                    error="the repository is locked by another process",
                    transient=True,
                    retry_at=at + timedelta(seconds=2),
                    category=Category.LOCKED,
                )
            )
    stored = {
        "source": SOURCE,
        "parent": f"{n - 1:064x}",
        "blobs": 16_384,
        "new_blobs": 120 + n % 50,
        "new_bytes": 491_520,
        "stored_bytes": 180_224,
        "changed_chunks": 120,
        "seconds": 41.5,
        "snapshot_window_seconds": 0.8,
    }
    snapshot_id = f"{n:064x}"
    totals = {
        "files": 1,
        "bytes": size,
        "blobs": 16_384,
        "new_blobs": 120 + n % 50,
        "new_bytes": 491_520,
        "stored_bytes": 180_224,
        "changed_chunks": 120,
        "duration_seconds": 43.25,
    }
    return [
        *history,
        StepCompleted(job_id=job_id, step="store", attempt=attempts, result={"stored": stored}),
        started(job_id, "commit", 1, at),
        StepCompleted(
            job_id=job_id, step="commit", attempt=1, result={"snapshot_id": snapshot_id, "totals": totals}
        ),
        BackupCompleted(job_id=job_id, snapshot_id=snapshot_id),
    ]


def restore_in_place(job_id: str, n: int, at: datetime) -> list[Event]:
    """An in-place restore: stage with heartbeats and a safety copy, then apply: 8 events."""
    snapshot_id = f"{n - 1:064x}"
    safety = f"/srv/pos/data/safety/pos-before-restore-{job_id}.db"
    stage = {"snapshot_id": snapshot_id, "staged": f"/srv/pos/staging/{job_id}.db", "safety_copy": safety}
    applied = {
        "snapshot_id": snapshot_id,
        "database": SOURCE,
        "safety_copy": safety,
        "files": 1,
        "bytes": 1 << 30,
    }
    return [
        RestoreRequested(
            job_id=job_id,
            snapshot_id=snapshot_id,
            target="in-place",
            force=False,
            check=True,
            plan=("stage", "apply"),
        ),
        started(job_id, "stage", 1, at),
        progressed(job_id, "stage", 1, 1 << 29, 1 << 30, at=at),
        progressed(job_id, "stage", 1, 1 << 30, 1 << 30, at=at),
        StepCompleted(job_id=job_id, step="stage", attempt=1, result=stage),
        started(job_id, "apply", 1, at),
        StepCompleted(job_id=job_id, step="apply", attempt=1, result=applied),
        RestoreCompleted(job_id=job_id, result=applied),
    ]


def started(job_id: str, step: str, attempt: int, at: datetime) -> StepStarted:
    return StepStarted(
        job_id=job_id, step=step, attempt=attempt, worker="till-1:4242:ab12cd", lease_expires_at=at + LEASE
    )


def progressed(
    job_id: str, step: str, attempt: int, done: int, total: int, *, at: datetime
) -> StepProgressed:
    return StepProgressed(
        job_id=job_id,
        step=step,
        attempt=attempt,
        done=done,
        total=total,
        detail={"phase": "pages", "blobs": done // 65_536},
        lease_expires_at=at + LEASE,
    )


def log_rows(count: int) -> Iterator[dict[str, Any]]:
    """Rows of the events table for `count` events of interleaved jobs, in the order they happen."""
    running: list[tuple[str, int, Iterator[Event]]] = []
    produced, n = 0, 0
    while produced < count:
        while len(running) < RUNNING_AT_ONCE:
            job_id = f"job-{n}"
            at = T0 + timedelta(minutes=n)
            if n % 20 == 11:
                running.append((codec.stream_id("restore", job_id), 0, iter(restore_in_place(job_id, n, at))))
            else:
                running.append((codec.stream_id("backup", job_id), 0, iter(backup(job_id, n, at))))
            n += 1
        slot = produced % len(running)
        stream, version, pending = running[slot]
        event = next(pending, None)
        if event is None:
            running.pop(slot)
            continue
        running[slot] = (stream, version + 1, pending)
        new = codec.encode(event)
        job_id = event.job_id
        yield {
            "stream_id": stream,
            "version": version + 1,
            "type": new.type,
            "schema_version": new.schema_version,
            "data": new.data,
            "metadata": Metadata(actor="schedule:nightly", correlation_id=job_id).as_dict(),
            "recorded_at": T0 + timedelta(milliseconds=produced),
        }
        produced += 1


def fill(engine: Engine, count: int) -> None:
    rows = log_rows(count)
    while True:
        batch = [row for _, row in zip(range(INSERT_BATCH), rows, strict=False)]
        if not batch:
            return
        with engine.begin() as conn:
            conn.execute(insert(events), batch)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children, user and system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(url: str, count: int, batch: int, workers: int | None, repeat: int) -> dict[str, Any]:
    engine = make_engine(url)
    runs = []
    try:
        create_schema(engine)
        projections.create_projection_schema(engine)
        started_at = time.perf_counter()
        fill(engine, count)
        generated = time.perf_counter() - started_at
        store = EventStore(engine, upcasters=codec.upcasters())
        for _ in range(repeat):
            cpu = cpu_seconds()
            report = projections.replay(engine, store, batch=batch, workers=workers)
            runs.append((report, cpu_seconds() - cpu))
        with engine.connect() as conn:
            jobs = conn.execute(select(func.count()).select_from(projections.jobs)).scalar_one()
            snapshots = conn.execute(select(func.count()).select_from(projections.snapshots)).scalar_one()
    finally:
        engine.dispose()
    best, cpu = min(runs, key=lambda run: run[0].seconds)
    return {
        "database": engine.dialect.name,
        "events": best.events,
        "jobs": jobs,
        "snapshots": snapshots,
        "workers": best.workers,
        "generate_seconds": round(generated, 1),
        "replay_seconds": round(best.seconds, 2),
        "replay_seconds_all": [round(r.seconds, 2) for r, _ in runs],
        "cpu_seconds": round(cpu, 1),
        "events_per_second": round(best.events / best.seconds),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "peak_rss_mib_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events read per query")
    parser.add_argument("--url", help="a PostgreSQL URL; a new SQLite file when not given")
    parser.add_argument("--workers", type=int, help="folding processes; by default replay's own choice")
    parser.add_argument(
        "--repeat", type=int, default=1, help="replays of the same log; the fastest is reported"
    )
    args = parser.parse_args(argv)
    if args.url:
        admin = make_engine(args.url)
        schema = f"capsule_bench_{secrets.token_hex(4)}"
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
            result = measure(
                url.render_as_string(hide_password=False), args.events, args.batch, args.workers, args.repeat
            )
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()
    else:
        folder = Path(tempfile.mkdtemp(prefix="capsule-replay-"))
        try:
            result = measure(
                f"sqlite:///{folder / 'events.db'}", args.events, args.batch, args.workers, args.repeat
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
