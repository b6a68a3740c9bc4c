"""How the repository's index behaves as it grows: peak memory and look-up time per size.

    python -m benchmarks.bench_index --blobs 1M,4M,16M [--json-out FILE]

For each size, a fresh process builds an index the way a backup does (packs of 4,096 blobs added
one after another, ids random as keyed hashes are), then looks up 262,144 ids it holds and
262,144 it does not, in batches of 256 as a backup does, and all of them at once as a restore
does. Peak RSS is the process's own high-water mark, measured from the start of the index (so
what the interpreter and numpy take is left out). A 4 KiB-page database has 262,144 pages per GiB:
4M blobs are about a 16 GiB database, 16M about 64 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PACK = 4096
QUERIES = 262_144


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(blobs: int) -> dict[str, Any]:
    """Run in the child process: build an index of `blobs` blobs and time look-ups in it."""
    import numpy as np

    from capsule.adapters.repository.index import RECORD, Index
    from capsule.api.entry import fixed_mmap_threshold

    fixed_mmap_threshold()  # as the capsule command does
    rng = np.random.default_rng(0)
    sample_every = max(1, blobs // QUERIES)
    held: list[bytes] = []
    index = Index()
    before = _peak_mb()
    started = time.perf_counter()
    for p in range(-(-blobs // PACK)):
        n = min(PACK, blobs - p * PACK)
        raw = rng.bytes(32 * n)
        recs = np.zeros(n, dtype=RECORD)
        recs["id"] = np.frombuffer(raw, dtype="V32")
        recs["length"] = 4096
        recs["offset"] = np.arange(n) * 4096
        index.add_pack(f"{p:064x}", recs)
        held.extend(raw[i : i + 32] for i in range(0, len(raw), 32 * sample_every))
    index.freeze()
    built = time.perf_counter() - started
    hits = held[:QUERIES]
    misses = [rng.bytes(32) for _ in range(len(hits))]

    def batches(ids: list[bytes]) -> float:
        t = time.perf_counter()
        for at in range(0, len(ids), 256):
            if not all(index.contains_many(ids[at : at + 256])) and ids is hits:
                raise AssertionError("an id the index holds was not found")
        return time.perf_counter() - t

    hit_s, miss_s = batches(hits), batches(misses)
    t = time.perf_counter()
    pos, _, _ = index.columns(hits)
    columns_s = time.perf_counter() - t
    if (pos < 0).any():
        raise AssertionError("an id the index holds was not found")
    runs = index._runs
    return {
        "blobs": blobs,
        "build_seconds": round(built, 2),
        "peak_rss_growth_mb": round(_peak_mb() - before, 1),
        "runs_in_memory": sum(1 for r in runs if r.recs is not None),
        "runs_in_files": sum(1 for r in runs if r.recs is None),
        "lookup_hits_us": round(hit_s / len(hits) * 1e6, 2),
        "lookup_misses_us": round(miss_s / len(misses) * 1e6, 2),
        "restore_lookup_us": round(columns_s / len(hits) * 1e6, 2),
    }


def _count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blobs", default="256K,1M,4M", help="comma-separated sizes (K and M allowed)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return 0
    results = []
    heads = ("blobs", "build s", "peak MB", "runs mem/file", "hit us", "miss us", "restore us")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (10, 8, 8, 14, 7, 8, 10), strict=True)))
    for blobs in (_count(b) for b in args.blobs.split(",")):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_index", "--child", str(blobs)],
            check=True,
            capture_output=True,
            text=True,
            env=os.environ,
        )
        r = json.loads(out.stdout)
        results.append(r)
        print(
            f"{r['blobs']:>10,} {r['build_seconds']:>8} {r['peak_rss_growth_mb']:>8} "
            f"{r['runs_in_memory']:>6}/{r['runs_in_files']:<7} {r['lookup_hits_us']:>7} "
            f"{r['lookup_misses_us']:>8} {r['restore_lookup_us']:>10}",
            flush=True,
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
