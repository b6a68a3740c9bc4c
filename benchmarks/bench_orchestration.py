"""What the event-sourced orchestration costs: backup overhead, step dispatch latency, appends.

    python3 -m benchmarks.bench_orchestration overhead --size 1G      # engine vs job, alternating
    python3 -m benchmarks.bench_orchestration dispatch               # embedded vs Redis vs RabbitMQ
    python3 -m benchmarks.bench_orchestration appends     # durable appends per second, sealed or not

Servers that are not reachable are reported as skipped, never as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.posdb import generate, parse_size

POSTGRES_URL = os.environ.get(
    "CAPSULE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = "redis://127.0.0.1:6379/14"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# ---- overhead ---------------------------------------------------------------------------------


def overhead(size: int, rounds: int, workdir: Path) -> dict[str, Any]:
    from capsule.orchestrator.jobrunner import run_job
    from capsule.orchestrator.settings import Settings
    from capsule.orchestrator.usecases.backup import back_up_database_in_process
    from capsule.orchestrator.usecases.repository import init_repository

    database = workdir / "pos.db"
    generate(database, size, journal_mode="wal", seed=7)
    direct: list[float] = []
    jobs: list[float] = []
    for r in range(rounds):
        for mode in ("engine", "job") if r % 2 == 0 else ("job", "engine"):
            home = workdir / f"home-{mode}-{r}"
            settings = Settings(database=database, repository=workdir / f"repo-{mode}-{r}", home=home)
            init_repository(settings)
            os.sync()
            started = time.perf_counter()
            if mode == "engine":
                back_up_database_in_process(settings)
                direct.append(time.perf_counter() - started)
            else:
                source = str(database.resolve())
                run_job(
                    settings, "backup", lambda rt, s=source: rt.request_backup(source=s, actor="person:bench")
                )
                jobs.append(time.perf_counter() - started)
            shutil.rmtree(settings.repository)
            shutil.rmtree(home)
    d, j = statistics.median(direct), statistics.median(jobs)
    return {
        "database_bytes": database.stat().st_size,
        "engine_seconds": direct,
        "job_seconds": jobs,
        "engine_median": round(d, 3),
        "job_median": round(j, 3),
        "overhead_percent": round(100 * (j - d) / d, 2),
    }


# ---- dispatch latency -------------------------------------------------------------------------


def _dispatch(broker: Any, n: int) -> dict[str, Any]:
    import dramatiq

    received: dict[int, float] = {}
    done = threading.Event()

    def ping(i: int, sent: float) -> None:
        received[i] = time.time() - sent
        if len(received) >= n:
            done.set()

    actor = dramatiq.actor(
        ping, broker=broker, actor_name=f"ping_{os.getpid()}", queue_name="capsule-bench", max_retries=0
    )
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for i in range(n):
            actor.send(i, time.time())
            time.sleep(0.005)  # one message at a time: latency, not throughput
        done.wait(60)
    finally:
        worker.stop()
        broker.close()
    latencies = sorted(v * 1000 for v in received.values())
    return {
        "messages": len(latencies),
        "median_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
    }


def dispatch(n: int) -> dict[str, Any]:
    from dramatiq.brokers.stub import StubBroker

    out: dict[str, Any] = {"embedded": _dispatch(StubBroker(), n)}
    if _listening("127.0.0.1", 6379):
        from dramatiq.brokers.redis import RedisBroker

        out["redis"] = _dispatch(RedisBroker(url=REDIS_URL), n)
    else:
        out["redis"] = "skipped: not reachable"
    if _listening("127.0.0.1", 5672):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        out["rabbitmq"] = _dispatch(RabbitmqBroker(url=AMQP_URL), n)
    else:
        out["rabbitmq"] = "skipped: not reachable"
    return out


# ---- appends ----------------------------------------------------------------------------------


def _appends(url: str, n: int, batch: int, key_path: Path | None) -> dict[str, Any]:
    from sqlalchemy import text

    from capsule.orchestrator.db import make_engine
    from capsule.orchestrator.eventstore import (
        ChainKeyFile,
        EventStore,
        Metadata,
        NewEvent,
        create_schema,
        verify_chain,
    )

    engine = make_engine(url)
    schema = None
    if engine.dialect.name == "postgresql":
        schema = f"bench_{os.getpid()}_{batch}_{'sealed' if key_path else 'unsealed'}"
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        engine.dispose()
        engine = make_engine(f"{url}?options=-csearch_path%3D{schema}")
    chain_key = ChainKeyFile(key_path) if key_path else None
    try:
        create_schema(engine, chain_key=chain_key)
        store = EventStore(engine, chain_key=chain_key)
        meta = Metadata(actor="system:bench", correlation_id="bench")
        event = NewEvent("StepProgressed", 1, {"job_id": "bench", "done": 1, "total": 2})
        started = time.perf_counter()
        for i in range(n // batch):
            store.append(f"bench-{i}", 0, [event] * batch, meta)
        seconds = time.perf_counter() - started
        verify_seconds = None
        if chain_key is not None:
            started = time.perf_counter()
            verify_chain(engine, chain_key)
            verify_seconds = time.perf_counter() - started
    finally:
        if schema is not None:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
    out = {
        "events": n,
        "per_transaction": batch,
        "seconds": round(seconds, 3),
        "per_second": round(n / seconds),
    }
    if verify_seconds is not None:
        out["verified_per_second"] = round(n / verify_seconds)
    return out


def appends(n: int, workdir: Path) -> dict[str, Any]:
    """Appends with and without the chain's seals, one after the other, on each database."""
    key = workdir / "event-log.key"
    out: dict[str, Any] = {}
    for name, key_path in (("unsealed", None), ("sealed", key)):
        out[f"sqlite_1_{name}"] = _appends(f"sqlite:///{workdir / f'events-{name}.db'}", n, 1, key_path)
        out[f"sqlite_100_{name}"] = _appends(
            f"sqlite:///{workdir / f'events100-{name}.db'}", n * 10, 100, key_path
        )
        if _listening("127.0.0.1", 5432):
            out[f"postgresql_1_{name}"] = _appends(POSTGRES_URL, n, 1, key_path)
            out[f"postgresql_100_{name}"] = _appends(POSTGRES_URL, n * 10, 100, key_path)
        else:
            out["postgresql"] = "skipped: not reachable"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.bench_orchestration", description=__doc__)
    parser.add_argument("what", choices=["overhead", "dispatch", "appends", "all"])
    parser.add_argument("--size", default="256M", help="database size for `overhead` (1G for the target)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="capsule-bench-"))
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count()}
    try:
        if args.what in ("overhead", "all"):
            results["overhead"] = overhead(parse_size(args.size), args.rounds, workdir)
        if args.what in ("dispatch", "all"):
            results["dispatch"] = dispatch(args.messages)
        if args.what in ("appends", "all"):
            results["appends"] = appends(args.events, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
