"""What the event log's copy on a destination costs: export, seal and read back a large log.

    python3 -m benchmarks.bench_logcopy --events 50000

The log is bench_replay's (realistic jobs, their events interleaved), inserted straight into a
SQLite file and then chained with a new key, as a log written before the chain is. Timed apart, each
with its processor time: exporting the log checked against its chain (one read snapshot); encoding,
compressing and sealing it as `capsule sync` does; opening, parsing and checking it again as
`capsule recover` does; and the one read an unchanged log costs (`log_head`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import zstandard

from benchmarks.bench_replay import cpu_seconds, fill
from capsule.adapters.repository.crypto import MasterKey, Sealer
from capsule.orchestrator.db import make_engine
from capsule.orchestrator.eventstore import ChainKeyFile, create_schema
from capsule.orchestrator.eventstore.logexport import export_log, log_head, parse
from capsule.orchestrator.usecases.logcopy import AAD_PREFIX, LEVEL, generation_name

T = TypeVar("T")


def timed(action: Callable[[], T]) -> tuple[T, float, float]:
    """The result, wall seconds and processor seconds of `action()`."""
    cpu, started = cpu_seconds(), time.perf_counter()
    result = action()
    return result, time.perf_counter() - started, cpu_seconds() - cpu


def measure(folder: Path, count: int) -> dict[str, Any]:
    log, key_file = folder / "events.db", ChainKeyFile(folder / "event-log.key")
    engine = make_engine(f"sqlite:///{log}")
    try:
        create_schema(engine)
        fill(engine, count)
        create_schema(engine, chain_key=key_file)  # seals every event: the chain starts
        export, export_wall, export_cpu = timed(lambda: export_log(engine, key_file.key()))
        _, head_wall, _ = timed(lambda: log_head(engine))
    finally:
        engine.dispose()
    sealer, now = Sealer(MasterKey.generate()), datetime.now(UTC)
    name = generation_name(now, export.head_position, export.head)
    document = export.to_bytes("ab" * 32, now)

    def seal() -> bytes:
        body = b"\x01" + zstandard.ZstdCompressor(level=LEVEL).compress(export.to_bytes("ab" * 32, now))
        return sealer.seal(body, AAD_PREFIX + name.encode())

    stored, seal_wall, seal_cpu = timed(seal)

    def read_back() -> int:
        body = sealer.open(stored, AAD_PREFIX + name.encode(), name)
        return len(parse(zstandard.ZstdDecompressor().decompress(body[1:])).export.rows)

    events, read_wall, read_cpu = timed(read_back)
    return {
        "events": events,
        "log_bytes": log.stat().st_size,
        "document_bytes": len(document),
        "stored_bytes": len(stored),
        "export_seconds": round(export_wall, 2),
        "export_cpu_seconds": round(export_cpu, 2),
        "seal_seconds": round(seal_wall, 2),
        "seal_cpu_seconds": round(seal_cpu, 2),
        "read_back_seconds": round(read_wall, 2),
        "read_back_cpu_seconds": round(read_cpu, 2),
        "unchanged_check_seconds": round(head_wall, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="capsule-logcopy-"))
    try:
        print(json.dumps(measure(folder, args.events)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
