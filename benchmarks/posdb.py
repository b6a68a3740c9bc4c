"""A point-of-sale-like SQLite database for benchmarks and tests.

Four tools, usable as functions or as ``python -m benchmarks.posdb``:

* ``generate``: build a database of a given size with realistic-looking rows;
* ``check``: integrity check plus the business invariant (sale total = sum of its items);
* ``write``: a continuous writer, one small sale per transaction, recording commit latency;
* ``mutate``: change about a given fraction of the database pages, in place.

``generate`` lives in the installed package (``capsule.adapters.sampleshop.database``), where
``capsule demo create`` uses it too; the rest is the benchmarks' own. Standard library and that
package only, so that it runs wherever the product runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from capsule.adapters.sampleshop.database import (
    JOURNAL_MODES,
    PAGE_SIZE,
    PAYMENT_METHODS,
    QUANTITIES,
    Catalog,
    Clock,
    generate,
    sale_note,
)
from capsule.domain.sizes import parse_size

__all__ = [
    "JOURNAL_MODES",
    "PAGE_SIZE",
    "check_consistency",
    "differing_pages",
    "generate",
    "mutate_pages",
    "parse_size",
    "run_writer",
    "start_writer",
    "stop_writer",
]

SLOW_COMMIT_MS = 5.0


# --- check --------------------------------------------------------------------------------------


def _require_file(path: str | os.PathLike[str]) -> None:
    # sqlite3.connect would silently create an empty database instead.
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such database: {path}")


def _connect_read_only(path: str | os.PathLike[str]) -> sqlite3.Connection:
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


BAD_SALES_SQL = """
SELECT s.id
FROM sales AS s
LEFT JOIN (
    SELECT sale_id, SUM(line_total_cents) AS items_total FROM sale_items GROUP BY sale_id
) AS i ON i.sale_id = s.id
WHERE s.total_cents IS NOT COALESCE(i.items_total, 0)
ORDER BY s.id
"""


def check_consistency(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Integrity check plus "every sale total equals the sum of its items".

    A file SQLite cannot read at all is reported as inconsistent, with SQLite's message.
    """
    _require_file(path)
    try:
        integrity, sales, bad_sales = _run_checks(path)
    except sqlite3.DatabaseError as exc:
        return {"integrity": [str(exc)], "sales": None, "bad_sales": [], "consistent": False}
    return {
        "integrity": integrity,
        "sales": sales,
        "bad_sales": bad_sales,
        "consistent": integrity == "ok" and not bad_sales,
    }


def _run_checks(path: str | os.PathLike[str]) -> tuple[str | list[str], int, list[int]]:
    conn = _connect_read_only(path)
    try:
        # Memory-mapped reads: integrity_check visits every page, read() per page costs more.
        conn.execute("PRAGMA mmap_size=2000000000")
        conn.execute("BEGIN")  # one read snapshot for every query, even with a live writer
        messages = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        integrity: str | list[str] = "ok" if messages == ["ok"] else messages
        sales = int(conn.execute("SELECT COUNT(*) FROM sales").fetchone()[0])
        bad_sales = [row[0] for row in conn.execute(BAD_SALES_SQL)]
        conn.execute("COMMIT")
    finally:
        conn.close()
    return integrity, sales, bad_sales


# --- continuous writer --------------------------------------------------------------------------


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no data."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass
class WriterStats:
    latencies_ms: list[float] = field(default_factory=list)
    timeline: list[list[float]] = field(default_factory=list)
    errors: int = 0

    def record(self, started_unix: float, latency_ms: float) -> None:
        self.latencies_ms.append(latency_ms)
        if latency_ms > SLOW_COMMIT_MS:
            self.timeline.append([round(started_unix, 6), round(latency_ms, 3)])

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "commits": len(ordered),
            "max_ms": round(ordered[-1], 3) if ordered else 0.0,
            "p99_ms": round(_percentile(ordered, 0.99), 3),
            "p50_ms": round(_percentile(ordered, 0.50), 3),
            "errors": self.errors,
            "timeline": self.timeline,
        }


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its current commit, then reports."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopped = True


def _commit_one_sale(conn: sqlite3.Connection, rng: random.Random, catalog: Catalog, clock: Clock) -> None:
    basket = []
    for _ in range(rng.randint(1, 5)):
        product = rng.randint(1, len(catalog.prices) - 1)
        quantity = rng.choice(QUANTITIES)
        unit = catalog.prices[product]
        basket.append((product, quantity, unit, unit * quantity))
    total = sum(line for *_, line in basket)
    now = clock.format(time.time())
    customer = rng.randint(1, catalog.customers) if catalog.customers and rng.random() < 0.7 else None
    receipt = int(time.time() * 1000) % 10**9
    conn.execute("BEGIN IMMEDIATE")
    try:
        cursor = conn.execute(
            "INSERT INTO sales (customer_id, created_at, total_cents, payment_method, note) "
            "VALUES (?, ?, ?, ?, ?)",
            (customer, now, total, rng.choice(PAYMENT_METHODS), sale_note(rng, receipt)),
        )
        sale_id = cursor.lastrowid
        conn.executemany(
            "INSERT INTO sale_items (sale_id, product_id, quantity, unit_price_cents, "
            "line_total_cents) VALUES (?, ?, ?, ?, ?)",
            [(sale_id, *line) for line in basket],
        )
        conn.executemany(
            "UPDATE products SET stock = stock - ?, updated_at = ? WHERE id = ?",
            [(quantity, now, product) for product, quantity, _, _ in basket],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _read_catalog(conn: sqlite3.Connection) -> Catalog:
    max_product = conn.execute("SELECT COALESCE(MAX(id), 0) FROM products").fetchone()[0]
    prices = [0] * (max_product + 1)
    for pid, price in conn.execute("SELECT id, price_cents FROM products"):
        prices[pid] = price
    customers = conn.execute("SELECT COALESCE(MAX(id), 0) FROM customers").fetchone()[0]
    return Catalog(prices=prices, customers=customers)


def run_writer(
    path: str | os.PathLike[str],
    *,
    seconds: float | None = None,
    interval_ms: float = 2.0,
    synchronous: str = "normal",
    seed: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Commit one sale per transaction until stopped; return latency statistics.

    ``on_ready`` runs once, after the first successful commit.
    """
    _require_file(path)
    stop = _StopFlag()
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    catalog = _read_catalog(conn)
    clock, stats = Clock(), WriterStats()
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while not stop.stopped and (deadline is None or time.monotonic() < deadline):
            started_unix, t0 = time.time(), time.perf_counter()
            try:
                _commit_one_sale(conn, rng, catalog, clock)
            except sqlite3.Error as exc:
                stats.errors += 1
                print(f"commit failed: {exc}", file=sys.stderr, flush=True)
            else:
                stats.record(started_unix, (time.perf_counter() - t0) * 1000.0)
                if on_ready is not None and len(stats.latencies_ms) == 1:
                    on_ready()
            if interval_ms > 0:
                time.sleep(interval_ms / 1000.0)
    finally:
        conn.close()
    return stats.summary()


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def start_writer(
    path: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    interval_ms: float = 2.0,
    ready_timeout: float = 30.0,
    extra_args: list[str] | None = None,
) -> subprocess.Popen[str]:
    """Start the writer in a child process and return once it has committed once."""
    env = dict(os.environ)
    # The child must import this package whatever the caller's working directory is.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_project_root()), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.posdb",
        "write",
        str(path),
        "--out",
        str(out_file),
        "--interval-ms",
        str(interval_ms),
        *(extra_args or []),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_ready(proc, ready_timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _wait_for_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                line = proc.stdout.readline()
                if line.strip() == "ready":
                    return
                if not line:  # EOF: the writer died before its first commit
                    break
    stderr = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    raise RuntimeError(f"writer did not become ready (exit {proc.poll()}): {stderr.strip()}")


def _out_file_of(proc: subprocess.Popen[str]) -> str:
    args = [str(a) for a in proc.args] if isinstance(proc.args, list | tuple) else []
    if "--out" not in args:
        raise ValueError("process was not started by start_writer")
    return args[args.index("--out") + 1]


def stop_writer(proc: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    """Ask the writer to stop (SIGTERM), wait for it and return its JSON report."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"writer exited with {proc.returncode}: {stderr.strip()}")
    result: dict[str, Any] = json.loads(Path(_out_file_of(proc)).read_text())
    return result


# --- mutate -------------------------------------------------------------------------------------


def _page_digests(path: str | os.PathLike[str], page_size: int) -> list[bytes]:
    digests = []
    with open(path, "rb") as handle:
        while page := handle.read(page_size):
            digests.append(hashlib.blake2b(page, digest_size=8).digest())
    return digests


def _changed_pages(before: list[bytes], after: list[bytes]) -> int:
    common = sum(1 for a, b in zip(before, after, strict=False) if a != b)
    return common + abs(len(after) - len(before))


def differing_pages(
    path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], page_size: int = PAGE_SIZE
) -> int:
    """Pages whose bytes differ between two database files (extra pages count as differing).

    Compares the main files only: checkpoint a WAL database first if its WAL matters.
    """
    return _changed_pages(_page_digests(path_a, page_size), _page_digests(path_b, page_size))


@dataclass
class _MutableTable:
    """A table whose rows are rewritten in place, with an estimate of its leaf pages."""

    name: str
    update_sql: str  # parameters: (salt, rowid)
    first_id: int
    last_id: int
    leaf_pages: int
    used_strata: set[int] = field(default_factory=set)

    def pick_rowids(self, rng: random.Random, count: int) -> list[int]:
        """One row from each of ``count`` unused page-sized strata of the rowid range.

        Rows are stored in rowid order, so a stratum of rows/leaf_pages consecutive ids is
        about one page: picking distinct strata spreads updates over distinct pages.
        """
        free = [s for s in range(self.leaf_pages) if s not in self.used_strata]
        chosen = rng.sample(free, min(count, len(free)))
        self.used_strata.update(chosen)
        span = (self.last_id - self.first_id + 1) / self.leaf_pages
        return [min(self.last_id, self.first_id + int((stratum + rng.random()) * span)) for stratum in chosen]


# Each update keeps the value's length, so rows do not move and only their leaf page changes,
# and touches no indexed column and no amount, so sale totals stay consistent.
_MUTATIONS = (
    ("sales", "UPDATE sales SET note = substr(? || note, 1, length(note)) WHERE id = ?"),
    ("customers", "UPDATE customers SET phone = substr(? || phone, 1, length(phone)) WHERE id = ?"),
    (
        "products",
        "UPDATE products SET description = substr(? || description, 1, length(description)) WHERE id = ?",
    ),
)


def _leaf_pages(conn: sqlite3.Connection, table: str, rows: int, page_size: int) -> int:
    try:
        pages = conn.execute(
            "SELECT COUNT(*) FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (table,)
        ).fetchone()[0]
    except sqlite3.OperationalError:  # SQLite built without the dbstat virtual table
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        row_length = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in columns)
        sample = conn.execute(f"SELECT AVG({row_length}) FROM (SELECT * FROM {table} LIMIT 1000)").fetchone()[
            0
        ]
        pages = rows * (float(sample or 64) + 12) / (page_size * 0.9)
    return max(1, int(pages))


def _mutable_tables(conn: sqlite3.Connection, page_size: int) -> list[_MutableTable]:
    tables = []
    for name, sql in _MUTATIONS:
        first, last, rows = conn.execute(f"SELECT MIN(id), MAX(id), COUNT(*) FROM {name}").fetchone()
        if rows:
            pages = _leaf_pages(conn, name, rows, page_size)
            tables.append(_MutableTable(name, sql, first, last, pages))
    return tables


def _apply_mutations(
    conn: sqlite3.Connection, tables: list[_MutableTable], rng: random.Random, pages: int
) -> None:
    """Rewrite rows on about ``pages`` leaf pages, shared among tables by their size."""
    total = sum(t.leaf_pages for t in tables)
    conn.execute("BEGIN IMMEDIATE")
    for table in tables:
        share = max(1, round(pages * table.leaf_pages / total))
        rows = [(f"#{rng.getrandbits(40):010x}#", rowid) for rowid in table.pick_rowids(rng, share)]
        conn.executemany(table.update_sql, rows)
    conn.execute("COMMIT")


def mutate_pages(path: str | os.PathLike[str], fraction: float = 0.01, seed: int = 1) -> int:
    """Change about ``fraction`` of the database's pages through SQL; return pages changed.

    The count is measured, not estimated: page digests before and after, with the WAL
    checkpointed into the main file both times.
    """
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    _require_file(path)
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = _page_digests(path, page_size)
        target = max(1, round(fraction * len(before)))
        tables = _mutable_tables(conn, page_size)
        changed = 0
        # Strata do not align exactly with pages, so top up until close to the target.
        for _ in range(8):
            missing = target - changed
            if missing <= target * 0.03:
                break
            _apply_mutations(conn, tables, rng, missing)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            changed = _changed_pages(before, _page_digests(path, page_size))
    finally:
        conn.close()
    return changed


# --- command line -------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.if_missing and args.path.exists():
        print(json.dumps({"path": str(args.path), "skipped": "exists"}))
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generate(args.path, parse_size(args.size), journal_mode=args.journal_mode, seed=args.seed)
    size = os.path.getsize(args.path)
    print(
        json.dumps(
            {"path": str(args.path), "bytes": size, "seconds": round(time.perf_counter() - started, 2)}
        )
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    result = check_consistency(args.path)
    print(json.dumps(result))
    return 0 if result["consistent"] else 1


def _cmd_write(args: argparse.Namespace) -> int:
    summary = run_writer(
        args.path,
        seconds=args.seconds,
        interval_ms=args.interval_ms,
        synchronous=args.synchronous,
        seed=args.seed,
        on_ready=lambda: print("ready", flush=True),  # start_writer waits for this line
    )
    text = json.dumps(summary)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, flush=True)
    return 0


def _cmd_mutate(args: argparse.Namespace) -> int:
    changed = mutate_pages(args.path, args.fraction, args.seed)
    with contextlib.closing(_connect_read_only(args.path)) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    total = os.path.getsize(args.path) // page_size
    print(
        json.dumps(
            {
                "changed_pages": changed,
                "total_pages": total,
                "page_size": page_size,
                "changed_fraction": round(changed / total, 5) if total else 0.0,
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.posdb",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="create a POS database of a given size")
    gen.add_argument("path", type=Path)
    gen.add_argument("--size", default="100M", help="e.g. 20M, 1G (default 100M)")
    gen.add_argument("--journal-mode", choices=JOURNAL_MODES, default="wal")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--if-missing", action="store_true", help="do nothing if PATH already exists")
    gen.set_defaults(func=_cmd_generate)

    check = sub.add_parser("check", help="integrity and sale-total consistency, as JSON")
    check.add_argument("path", type=Path)
    check.set_defaults(func=_cmd_check)

    write = sub.add_parser("write", help="commit one sale per transaction until stopped")
    write.add_argument("path", type=Path)
    write.add_argument("--seconds", type=float, default=None, help="default: until SIGTERM")
    write.add_argument("--out", type=Path, default=None, help="JSON report (default stdout)")
    write.add_argument("--interval-ms", type=float, default=2.0, help="pause between commits")
    write.add_argument(
        "--synchronous",
        choices=("off", "normal", "full"),
        default="normal",
        help="PRAGMA synchronous for the writer (normal is the usual WAL setting)",
    )
    write.add_argument("--seed", type=int, default=None)
    write.set_defaults(func=_cmd_write)

    mutate = sub.add_parser("mutate", help="change about a fraction of the pages in place")
    mutate.add_argument("path", type=Path)
    mutate.add_argument("--fraction", type=float, default=0.01)
    mutate.add_argument("--seed", type=int, default=1)
    mutate.set_defaults(func=_cmd_mutate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(f"posdb {args.command}: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
