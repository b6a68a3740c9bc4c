"""The keyed BLAKE3 ids of a database's pages: together in native code, and one call per page.

    python -m benchmarks.bench_pageids [--mib 256] [--page-size 4096] [--runs 5] [--json-out FILE]

Every database backup computes the id of every page it reads (a 506 MB database: 123,651 pages of
4 KiB). In one process, on `--mib` MiB of random bytes already in memory, in blocks of 1 MiB as the
sealing workers hash them, each way takes turns `--runs` times:

- native: `Sealer.blob_ids`, which hands the whole pages to the native hasher (pageids.c);
- one by one: one keyed hasher updated, read and reset for each page (what `Sealer.blob_ids`
  does where the native hasher was not built);
- whole: the keyed BLAKE3 of each 1 MiB block as one message, for scale: the rate the `blake3`
  package reaches when it has many chunks to hash side by side (not page ids).

It prints each way's median in milliseconds per MiB and processor time, and the ratio of one by
one to native. Both give the same ids (checked on the first block before timing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

from capsule.adapters.repository import crypto
from capsule.adapters.repository.crypto import MasterKey, Sealer

BLOCK = 1024 * 1024


def one_by_one(key: bytes, block: memoryview, size: int) -> bytes:
    hasher = blake3.blake3(key=key)
    out = bytearray()
    for at in range(0, len(block), size):
        hasher.update(block[at : at + size])
        out += hasher.digest()
        hasher.reset()
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--page-size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    key = MasterKey.generate()
    sealer = Sealer(key)
    data = memoryview(os.urandom(args.mib * BLOCK))
    blocks = [data[at : at + BLOCK] for at in range(0, len(data), BLOCK)]
    size = args.page_size
    if crypto._native_page_ids is None:
        print("the native hasher is not built here: 'native' is one by one too", file=sys.stderr)
    if sealer.blob_ids(blocks[0], size) != one_by_one(key.identity, blocks[0], size):
        print("the two ways disagree on the ids", file=sys.stderr)
        return 1

    ways: dict[str, Callable[[memoryview], object]] = {
        "native": lambda b: sealer.blob_ids(b, size),
        "one by one": lambda b: one_by_one(key.identity, b, size),
        "whole": lambda b: blake3.blake3(b, key=key.identity).digest(),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.runs):
        for name, way in ways.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for block in blocks:
                way(block)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))

    result: dict[str, Any] = {"mib": args.mib, "page_size": size, "runs": args.runs}
    print(f"{args.mib} MiB, pages of {size} bytes, medians of {args.runs} runs taking turns")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        result[name] = {"ms_per_mib": 1000 * wall / args.mib, "cpu_seconds": cpu}
        print(f"  {name:<11} {1000 * wall / args.mib:6.3f} ms/MiB   {cpu:.3f} s CPU")
    ratio = result["one by one"]["ms_per_mib"] / result["native"]["ms_per_mib"]
    result["ratio"] = ratio
    print(f"  one by one / native: {ratio:.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
