"""Database benchmark: Capsule and restic backing up a live point-of-sale SQLite database.

    python -m benchmarks.bench_database [--size 1G] [--workdir DIR] [--keep] [--json-out FILE]
                                        [--backup-runs 3] [--restore-runs 3] [--verify-runs 3]
                                        [--cold-restore]

Steps, for each tool: first backup while a writer commits sales (timed again into fresh
repositories, the tools taking turns, and the median reported), a settling backup with
no writer, a second backup after about 1% of the pages changed, a restore of the latest
snapshot (checked for consistency; timed again, the tools taking turns, and the median
reported) and a full verification reading all data (three times, the tools taking turns in
alternating order; the median time and CPU time reported). See benchmarks/README.md.

restic cannot snapshot a live SQLite database consistently, so it backs up a copy made
with SQLite's online backup API; the copy is timed separately. Every tool runs on a warm page
cache. `--cold-restore` drops it before every restore instead (it needs root), so that each tool
reads its repository from the disk, as a restore after a loss does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import (
    MB,
    Benchmark,
    CommandResult,
    align_columns,
    capsule_command,
    capsule_env,
    directory_bytes,
    drop_page_cache,
    last_json_object,
    log,
    peak_rss,
    restic_env,
    restic_summary,
    run_measured,
    scratch_directory,
)
from benchmarks.common import fmt as _fmt
from benchmarks.common import fmt_mb as _mb
from benchmarks.posdb import (
    check_consistency,
    differing_pages,
    generate,
    mutate_pages,
    parse_size,
    run_writer,
    start_writer,
    stop_writer,
)

DB_NAME = "pos.db"
MUTATE_FRACTION = 0.01
TARGET_RSS_BYTES = 300 * MB
TARGET_WRITER_MAX_MS = 50.0
TARGET_GROWTH_RATIO = 2.0
BASELINE_WRITER_SECONDS = 3.0


# --- tools --------------------------------------------------------------------------------------


@dataclass
class BackupRun:
    seconds: float  # the tool's own command
    prepare_seconds: float  # work done before the tool runs (restic: the consistent copy)
    peak_rss_bytes: int
    source_bytes: int
    report: dict[str, Any]


class Tool(Protocol):
    name: str
    repository: Path

    def init(self) -> CommandResult: ...

    def backup(self) -> BackupRun: ...

    def restore(self, target: Path) -> tuple[CommandResult, Path]: ...

    def verify(self) -> CommandResult: ...

    def fresh(self, workdir: Path) -> Tool:
        """The same tool with a repository (and state) of its own under `workdir`."""
        ...


class Capsule:
    name = "capsule"

    def __init__(self, command: list[str], database: Path, workdir: Path) -> None:
        self.command = command
        self.database = database
        self.repository = workdir / "capsule-repo"
        self.env = capsule_env(
            command,
            {
                "CAPSULE_DATABASE": str(database),
                "CAPSULE_REPOSITORY": str(self.repository),
                "CAPSULE_HOME": str(workdir / "capsule-home"),
            },
        )

    def _run(self, *args: str) -> CommandResult:
        return run_measured([*self.command, *args], self.env)

    def init(self) -> CommandResult:
        return self._run("init")

    def backup(self) -> BackupRun:
        size = os.path.getsize(self.database)
        result = self._run("backup", "--kind", "database", "--json")
        report = last_json_object(result.stdout)
        return BackupRun(result.seconds, 0.0, result.peak_rss_bytes, size, report)

    def restore(self, target: Path) -> tuple[CommandResult, Path]:
        result = self._run("restore", "latest", "--to", str(target))
        return result, target / self.database.name

    def verify(self) -> CommandResult:
        return self._run("verify", "--read-data")

    def fresh(self, workdir: Path) -> Capsule:
        return Capsule(self.command, self.database, workdir)


def consistent_copy(source: Path, destination: Path) -> None:
    """Copy a live database with SQLite's online backup API (one step, one read snapshot)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{destination}{suffix}")
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(destination, isolation_level=None)
    # As cheap as Capsule's own copy: no journal and no fsync for a file that is only read once.
    dst.execute("PRAGMA journal_mode=OFF").fetchone()
    dst.execute("PRAGMA synchronous=OFF")
    try:
        # A single step: a stepped copy restarts whenever the writer commits in between.
        src.backup(dst, pages=-1)
    finally:
        dst.close()
        src.close()


class Restic:
    name = "restic"

    def __init__(self, executable: str, database: Path, workdir: Path) -> None:
        self.executable = executable
        self.database = database
        self.repository = workdir / "restic-repo"
        self.copy = workdir / "restic-source" / database.name
        self.copy.parent.mkdir(parents=True, exist_ok=True)
        self.env = restic_env(self.repository, workdir)

    def _run(self, *args: str) -> CommandResult:
        return run_measured([self.executable, *args], self.env)

    def version(self) -> str:
        return self._run("version").stdout.strip()

    def init(self) -> CommandResult:
        return self._run("init")

    def backup(self) -> BackupRun:
        started = time.perf_counter()
        consistent_copy(self.database, self.copy)
        prepare = time.perf_counter() - started
        result = self._run("backup", "--json", "--host", "benchmark", str(self.copy))
        summary = restic_summary(result.stdout)
        size = os.path.getsize(self.copy)
        return BackupRun(result.seconds, prepare, result.peak_rss_bytes, size, summary)

    def restore(self, target: Path) -> tuple[CommandResult, Path]:
        result = self._run("restore", "latest", "--target", str(target))
        # restic recreates the absolute source path under the target.
        restored = next(target.rglob(self.copy.name), target / self.copy.name)
        return result, restored

    def verify(self) -> CommandResult:
        return self._run("check", "--read-data")

    def fresh(self, workdir: Path) -> Restic:
        return Restic(self.executable, self.database, workdir)


# --- benchmark steps ----------------------------------------------------------------------------


@contextlib.contextmanager
def writer_running(database: Path, report: Path) -> Iterator[dict[str, Any]]:
    """Run the POS writer for the duration of the block; its statistics land in the dict."""
    stats: dict[str, Any] = {}
    proc = start_writer(database, report)
    try:
        yield stats
    finally:
        stats.update(stop_writer(proc))


def _backup_figures(run: BackupRun, repo_before: int, repo_after: int) -> dict[str, Any]:
    return {
        "seconds": round(run.seconds, 3),
        "prepare_seconds": round(run.prepare_seconds, 3),
        "source_bytes": run.source_bytes,
        "mb_per_s": round(run.source_bytes / MB / run.seconds, 2),
        "mb_per_s_with_prepare": round(run.source_bytes / MB / (run.seconds + run.prepare_seconds), 2),
        "peak_rss_bytes": run.peak_rss_bytes,
        "repository_bytes_before": repo_before,
        "repository_bytes_after": repo_after,
        "repository_growth_bytes": repo_after - repo_before,
        "report": run.report,
    }


def _writer_figures(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: stats.get(key) for key in ("commits", "max_ms", "p99_ms", "p50_ms", "errors")}


def step_first_backup(tool: Tool, database: Path, workdir: Path) -> dict[str, Any]:
    with writer_running(database, workdir / f"writer-{tool.name}.json") as writer:
        before = directory_bytes(tool.repository)
        started = time.time()
        run = tool.backup()
        ended = time.time()
    figures = _backup_figures(run, before, directory_bytes(tool.repository))
    # The command itself started `run.seconds` before it ended: before that, the benchmark was
    # syncing and pausing (see run_measured), with the writer already running.
    command_started = max(started, ended - run.seconds)
    timeline = writer.get("timeline", [])
    figures["writer"] = _writer_figures(writer)
    # The worst commit while the backup ran. The timeline lists every commit slower than 5 ms, so a
    # window without one had nothing slower than that.
    during = [ms for at, ms in timeline if at + ms / 1000 >= command_started and at <= ended]
    figures["writer"]["max_ms"] = max(during, default=min(5.0, writer.get("max_ms") or 5.0))
    figures["writer"]["max_ms_whole_run"] = writer.get("max_ms")
    figures["backup_window_unix"] = [round(command_started, 6), round(ended, 6)]
    # Offsets from the backup's start tell a lock taken at snapshot time from CPU contention.
    figures["writer_slow_commits"] = [[round(at - command_started, 3), ms] for at, ms in timeline]
    return figures


def step_first_backup_again(tool: Tool, database: Path, workdir: Path) -> dict[str, Any]:
    """Another first backup with the writer running, into a fresh repository removed afterwards."""
    scratch = workdir / f"first-backup-again-{tool.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        again = tool.fresh(scratch)
        again.init()
        return step_first_backup(again, database, workdir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _take_runs(
    figures: dict[str, Any], first: dict[str, Any], extra: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Remove the `extra` runs from a tool's figures: ([first, every extra run that finished],
    [why each failed one failed])."""
    runs = [figures.pop(label, {}) for label in extra]
    return [first, *(run for run in runs if "seconds" in run)], [
        run["failed"] for run in runs if "failed" in run
    ]


def fold_first_backup_runs(results: dict[str, Any], extra: list[str]) -> None:
    """Make each tool's first backup time the median of its runs (the first one and `extra`).

    The writer's worst commit and the peak RSS become the worst over every run: the targets hold
    only if they hold each time. The first run's repository is the one the later steps use.
    """
    for figures in results.values():
        first = figures.get("first_backup")
        if not isinstance(first, dict) or "seconds" not in first:
            continue
        done, failed = _take_runs(figures, first, extra)
        if failed:
            first["failed_runs"] = failed
        seconds = [run["seconds"] for run in done]
        with_prepare = [run["seconds"] + run["prepare_seconds"] for run in done]
        first["first_seconds"] = first["seconds"]
        first["runs_seconds"] = seconds
        first["seconds"] = round(statistics.median(seconds), 3)
        first["mb_per_s"] = round(first["source_bytes"] / MB / first["seconds"], 2)
        first["mb_per_s_with_prepare"] = round(
            first["source_bytes"] / MB / statistics.median(with_prepare), 2
        )
        first["peak_rss_bytes"] = max(run["peak_rss_bytes"] for run in done)
        worst = [run.get("writer", {}).get("max_ms") for run in done]
        first["writer"]["max_ms_runs"] = worst
        first["writer"]["max_ms"] = max((ms for ms in worst if ms is not None), default=None)
        # Every run's slow commits, with the run's number, for the report's list of the slowest.
        first["writer_slow_commits"] = [
            [at, ms, number]
            for number, run in enumerate(done, 1)
            for at, ms, *_ in run.get("writer_slow_commits", [])
        ]


def step_backup(tool: Tool) -> dict[str, Any]:
    before = directory_bytes(tool.repository)
    run = tool.backup()
    return _backup_figures(run, before, directory_bytes(tool.repository))


def _cold(drop: bool) -> None:
    if drop and (reason := drop_page_cache()):
        raise RuntimeError(f"could not drop the page cache before a restore: {reason}")


def step_restore(tool: Tool, database: Path, workdir: Path, drop: bool = False) -> dict[str, Any]:
    target = workdir / f"restore-{tool.name}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    _cold(drop)
    result, restored = tool.restore(target)
    sync_seconds = timed_sync()
    size = os.path.getsize(restored)
    # Nothing has written to the source since the second backup, so the latest snapshot should
    # restore its pages exactly: a consistent but stale file would show up here.
    differing = differing_pages(database, restored, _page_size(database))
    check_started = time.perf_counter()
    consistency = check_consistency(restored)
    return {
        "pages_differing_from_source": differing,
        "seconds": round(result.seconds, 3),
        "sync_seconds": sync_seconds,
        "bytes": size,
        "mb_per_s": round(size / MB / result.seconds, 2),
        "peak_rss_bytes": result.peak_rss_bytes,
        "consistent": consistency["consistent"],
        "integrity": consistency["integrity"],
        "sales": consistency["sales"],
        "bad_sales": len(consistency["bad_sales"]),
        "check_seconds": round(time.perf_counter() - check_started, 3),
    }


def step_restore_again(tool: Tool, workdir: Path, drop: bool = False) -> dict[str, Any]:
    """Another timed restore of the latest snapshot, into a folder removed afterwards."""
    target = workdir / f"restore-again-{tool.name}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    try:
        _cold(drop)
        result, restored = tool.restore(target)
        sync_seconds = timed_sync()
        if os.path.getsize(restored) == 0:
            raise RuntimeError(f"{tool.name} restored an empty file")
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return {
        "seconds": round(result.seconds, 3),
        "sync_seconds": sync_seconds,
        "peak_rss_bytes": result.peak_rss_bytes,
    }


def timed_sync() -> float:
    """Seconds a `sync` takes right after a restore: what the tool left for the system to write.

    Capsule syncs the restored file before it puts it in place; restic leaves its writes in the
    page cache. A restore's time plus this is the time until the restored file is on the disk.
    """
    started = time.perf_counter()
    os.sync()
    return round(time.perf_counter() - started, 3)


def fold_restore_runs(results: dict[str, Any], extra: list[str]) -> None:
    """Make each tool's restore time the median of its runs (the first, checked one, and `extra`).

    One run decides little here: the same restore varies by up to 40% from one run to the next on
    the reference machine, more than the gap between the tools.
    """
    for figures in results.values():
        restore = figures.get("restore")
        if not isinstance(restore, dict) or "seconds" not in restore:
            continue
        done, _failed = _take_runs(figures, restore, extra)
        runs = [run["seconds"] for run in done]
        on_disk = [run["seconds"] + run.get("sync_seconds", 0.0) for run in done]
        restore["first_seconds"] = restore["seconds"]
        restore["runs_seconds"] = runs
        restore["seconds"] = round(statistics.median(runs), 3)
        restore["on_disk_runs_seconds"] = [round(x, 3) for x in on_disk]
        restore["on_disk_seconds"] = round(statistics.median(on_disk), 3)
        restore["mb_per_s"] = round(restore["bytes"] / MB / restore["seconds"], 2)


def step_verify(tool: Tool) -> dict[str, Any]:
    result = tool.verify()
    return {
        "seconds": round(result.seconds, 3),
        "cpu_seconds": round(result.cpu_seconds, 3),
        "peak_rss_bytes": result.peak_rss_bytes,
    }


def fold_verify_runs(results: dict[str, Any], extra: list[str]) -> None:
    """Make each tool's verify time (and CPU time) the median of its runs, the tools having taken
    turns: one run decides little on a machine whose speed drifts within a benchmark."""
    for figures in results.values():
        first = figures.get("verify")
        if not isinstance(first, dict) or "seconds" not in first:
            continue
        done, failed = _take_runs(figures, first, extra)
        if failed:
            first["failed_runs"] = failed
        runs = [run["seconds"] for run in done]
        cpu = [run.get("cpu_seconds", 0.0) for run in done]
        first["runs_seconds"] = runs
        first["runs_cpu_seconds"] = cpu
        first["seconds"] = round(statistics.median(runs), 3)
        first["cpu_seconds"] = round(statistics.median(cpu), 3)
        first["peak_rss_bytes"] = max(run["peak_rss_bytes"] for run in done)


def _page_size(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def baseline_writer(database: Path) -> dict[str, Any]:
    """Writer latency with nothing else running, to read the backup figures against."""
    stats = run_writer(database, seconds=BASELINE_WRITER_SECONDS)
    return _writer_figures(stats)


# --- orchestration ------------------------------------------------------------------------------


def _init(tool: Tool) -> dict[str, Any]:
    result = tool.init()
    return {"seconds": round(result.seconds, 3), "peak_rss_bytes": result.peak_rss_bytes}


def _select_tools(database: Path, workdir: Path, wanted: set[str]) -> tuple[list[Tool], dict[str, str]]:
    tools: list[Tool] = []
    missing: dict[str, str] = {}
    if "capsule" in wanted:
        command = capsule_command()
        if command:
            tools.append(Capsule(command, database, workdir))
        else:
            missing["capsule"] = "capsule CLI not found (pip install -e .)"
    if "restic" in wanted:
        executable = shutil.which("restic")
        if executable:
            tools.append(Restic(executable, database, workdir))
        else:
            missing["restic"] = "restic not found on PATH"
    return tools, missing


def run_benchmark(
    size_bytes: int,
    workdir: Path,
    wanted: set[str],
    seed: int,
    restore_runs: int = 3,
    *,
    backup_runs: int = 3,
    cold_restore: bool = False,
    verify_runs: int = 3,
) -> dict[str, Any]:
    database = workdir / DB_NAME
    log(f"generating a {size_bytes / MB:.0f} MB POS database (WAL)")
    started = time.perf_counter()
    generate(database, size_bytes, journal_mode="wal", seed=seed)
    results: dict[str, Any] = {
        "settings": {
            "size_bytes": size_bytes,
            "database_bytes": os.path.getsize(database),
            "page_size": _page_size(database),
            "generate_seconds": round(time.perf_counter() - started, 2),
            "cpu_count": os.cpu_count(),
            "page_cache": _page_cache_setting(cold_restore),
            "restic_source": "copy made with the SQLite online backup API (prepare_seconds)",
        },
    }
    tools, missing = _select_tools(database, workdir, wanted)
    for tool in tools:
        if isinstance(tool, Restic):
            results["settings"]["restic_version"] = tool.version()
    log("writer baseline (no backup running)")
    results["writer_baseline"] = baseline_writer(database)

    bench: Benchmark[Tool] = Benchmark(tools, log)
    bench.step("init", _init)
    bench.step("first_backup", lambda t: step_first_backup(t, database, workdir))
    # One first backup decides little on a machine whose speed drifts within a run: each tool backs
    # up again into fresh repositories, the tools taking turns, and the median counts.
    extra_backups = [f"first_backup_{n}" for n in range(2, backup_runs + 1)]
    for label in extra_backups:
        bench.step(label, lambda t: step_first_backup_again(t, database, workdir), required=False)
    fold_first_backup_runs(bench.results, extra_backups)
    # The writer's commits after each first snapshot would otherwise count as "changes".
    bench.step("settle_backup", step_backup)
    log(f"changing about {MUTATE_FRACTION:.0%} of the pages")
    changed_pages = mutate_pages(database, MUTATE_FRACTION, seed=seed + 1)
    page_size = results["settings"]["page_size"]
    results["mutation"] = {
        "changed_pages": changed_pages,
        "total_pages": os.path.getsize(database) // page_size,
        "changed_bytes": changed_pages * page_size,
    }
    bench.step("second_backup", step_backup)
    # Tried once here: where it is not allowed, every restore runs warm and the report says so.
    refused = drop_page_cache() if cold_restore else None
    drop = cold_restore and refused is None
    results["settings"]["page_cache"] = _page_cache_setting(cold_restore, refused)
    bench.step("restore", lambda t: step_restore(t, database, workdir, drop))
    # The tools take turns, so that neither always runs in a quieter moment.
    extra = [f"restore_{n}" for n in range(2, restore_runs + 1)]
    for label in extra:
        bench.step(label, lambda t: step_restore_again(t, workdir, drop), required=False)
    fold_restore_runs(bench.results, extra)
    bench.step("verify", step_verify)
    extra_verifies = [f"verify_{n}" for n in range(2, verify_runs + 1)]
    for n, label in enumerate(extra_verifies):
        # Every other run in the other order, so that neither tool always goes first.
        bench.step(label, step_verify, required=False, reverse=n % 2 == 0)
    fold_verify_runs(bench.results, extra_verifies)

    for name, reason in missing.items():
        bench.results[name] = {"error": reason}
    results["tools"] = bench.results
    results["targets"] = evaluate_targets(results)
    return results


def _page_cache_setting(cold_restore: bool, refused: str | None = None) -> str:
    if not cold_restore:
        return "warm (caches are not dropped)"
    if refused:
        return f"warm: it could not be dropped ({refused})"
    return "warm for backups, dropped before every restore"


# --- report -------------------------------------------------------------------------------------


def _get(results: dict[str, Any], tool: str, *keys: str) -> Any:
    node: Any = results["tools"].get(tool, {})
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _growth_ratio(results: dict[str, Any], tool: str) -> float | None:
    growth = _get(results, tool, "second_backup", "repository_growth_bytes")
    changed = results["mutation"]["changed_bytes"]
    return None if growth is None or not changed else growth / changed


def _peak_rss(results: dict[str, Any], tool: str) -> int | None:
    """Highest peak RSS over every command the tool ran."""
    return peak_rss(results["tools"].get(tool, {}))


def evaluate_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: its figures and PASS / FAIL (None when a figure is missing)."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    def at_least(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a >= b

    c_backup = _get(results, "capsule", "first_backup", "mb_per_s")
    r_backup = _get(results, "restic", "first_backup", "mb_per_s")
    c_restore = _get(results, "capsule", "restore", "mb_per_s")
    r_restore = _get(results, "restic", "restore", "mb_per_s")
    growth = _growth_ratio(results, "capsule")
    # A failed run's peak RSS says nothing about the target.
    capsule_finished = "error" not in results["tools"].get("capsule", {"error": "not run"})
    rss = _peak_rss(results, "capsule") if capsule_finished else None
    latency = _get(results, "capsule", "first_backup", "writer", "max_ms")
    checks = {
        "first_backup_mb_per_s_ge_restic": (c_backup, r_backup, at_least(c_backup, r_backup)),
        "restore_mb_per_s_ge_restic": (c_restore, r_restore, at_least(c_restore, r_restore)),
        "second_backup_growth_le_2x_changed": (
            growth,
            TARGET_GROWTH_RATIO,
            None if growth is None else growth <= TARGET_GROWTH_RATIO,
        ),
        "capsule_peak_rss_le_300mb": (
            rss,
            TARGET_RSS_BYTES,
            None if rss is None else rss <= TARGET_RSS_BYTES,
        ),
        "writer_max_commit_le_50ms": (
            latency,
            TARGET_WRITER_MAX_MS,
            None if latency is None else latency <= TARGET_WRITER_MAX_MS,
        ),
    }
    return {
        name: {"value": value, "threshold": bound, "verdict": verdict(ok)}
        for name, (value, bound, ok) in checks.items()
    }


def _advantage(capsule: float | None, restic: float | None, higher_is_better: bool) -> str:
    if not capsule or not restic:
        return "-"
    return f"x{(capsule / restic) if higher_is_better else (restic / capsule):.2f}"


ReportRow = tuple[str, Any, Any, bool | None, Callable[[Any], str], str]


def _rows(results: dict[str, Any]) -> list[ReportRow]:
    """(label, capsule value, restic value, higher-is-better or None, formatter, target key)."""

    def both(*keys: str) -> tuple[Any, Any]:
        return _get(results, "capsule", *keys), _get(results, "restic", *keys)

    secs: Callable[[Any], str] = lambda v: _fmt(v, " s")  # noqa: E731
    rate: Callable[[Any], str] = lambda v: _fmt(v, " MB/s")  # noqa: E731
    ms: Callable[[Any], str] = lambda v: _fmt(v, " ms")  # noqa: E731
    plain: Callable[[Any], str] = _fmt
    rows: list[ReportRow] = [
        ("first backup: time (median of runs)", *both("first_backup", "seconds"), False, secs, ""),
        (
            "  each run",
            *(_runs(v) for v in both("first_backup", "runs_seconds")),
            None,
            plain,
            "",
        ),
        (
            "  as reported by the tool (first run)",
            _get(results, "capsule", "first_backup", "report", "totals", "duration_seconds"),
            _get(results, "restic", "first_backup", "report", "total_duration"),
            False,
            secs,
            "",
        ),
        (
            "first backup: throughput",
            *both("first_backup", "mb_per_s"),
            True,
            rate,
            "first_backup_mb_per_s_ge_restic",
        ),
        (
            "  restic incl. consistent copy",
            None,
            _get(results, "restic", "first_backup", "mb_per_s_with_prepare"),
            None,
            rate,
            "",
        ),
        (
            "  consistent copy time",
            None,
            _get(results, "restic", "first_backup", "prepare_seconds"),
            None,
            secs,
            "",
        ),
        ("first backup: repository size", *both("first_backup", "repository_bytes_after"), False, _mb, ""),
        ("writer commits during first run", *both("first_backup", "writer", "commits"), None, plain, ""),
        (
            "writer max commit latency (any run)",
            *both("first_backup", "writer", "max_ms"),
            False,
            ms,
            "writer_max_commit_le_50ms",
        ),
        ("writer p99 commit latency (first run)", *both("first_backup", "writer", "p99_ms"), False, ms, ""),
        ("writer errors (first run)", *both("first_backup", "writer", "errors"), None, plain, ""),
        ("settle backup (no change): time", *both("settle_backup", "seconds"), False, secs, ""),
        (
            "settle backup: repository growth",
            *both("settle_backup", "repository_growth_bytes"),
            False,
            _mb,
            "",
        ),
        ("second backup: time", *both("second_backup", "seconds"), False, secs, ""),
        (
            "second backup: repository growth",
            *both("second_backup", "repository_growth_bytes"),
            False,
            _mb,
            "",
        ),
        (
            "  growth / changed bytes",
            _growth_ratio(results, "capsule"),
            _growth_ratio(results, "restic"),
            False,
            lambda v: _fmt(v, "x"),
            "second_backup_growth_le_2x_changed",
        ),
        ("restore: time (median of runs)", *both("restore", "seconds"), False, secs, ""),
        (
            "  each run",
            *(_runs(v) for v in both("restore", "runs_seconds")),
            None,
            plain,
            "",
        ),
        ("restore: throughput", *both("restore", "mb_per_s"), True, rate, "restore_mb_per_s_ge_restic"),
        ("  until on disk (with a sync after)", *both("restore", "on_disk_seconds"), False, secs, ""),
        ("restore: consistent", *both("restore", "consistent"), None, plain, ""),
        (
            "restore: pages differing from source",
            *both("restore", "pages_differing_from_source"),
            None,
            plain,
            "",
        ),
        ("verify (read all data): time (median of runs)", *both("verify", "seconds"), False, secs, ""),
        ("  each run", *(_runs(v) for v in both("verify", "runs_seconds")), None, plain, ""),
        ("  CPU time, user + system (median)", *both("verify", "cpu_seconds"), False, secs, ""),
        ("peak RSS, first backup", *both("first_backup", "peak_rss_bytes"), False, _mb, ""),
        ("peak RSS, restore", *both("restore", "peak_rss_bytes"), False, _mb, ""),
        (
            "peak RSS, any command",
            _peak_rss(results, "capsule"),
            _peak_rss(results, "restic"),
            False,
            _mb,
            "capsule_peak_rss_le_300mb",
        ),
    ]
    return rows


def render_report(results: dict[str, Any]) -> str:
    settings, mutation = results["settings"], results["mutation"]
    baseline = results["writer_baseline"]
    lines = [
        f"database: {settings['database_bytes'] / MB:.1f} MB, page size {settings['page_size']},"
        f" generated in {settings['generate_seconds']} s; page cache: {settings['page_cache']}",
        f"restic source: {settings['restic_source']}",
        f"writer baseline (no backup): max {baseline['max_ms']} ms, p99 {baseline['p99_ms']} ms,"
        f" {baseline['commits']} commits in {BASELINE_WRITER_SECONDS:.0f} s",
        f"mutation: {mutation['changed_pages']} of {mutation['total_pages']} pages changed"
        f" ({mutation['changed_bytes'] / MB:.2f} MB)",
        "",
    ]
    header = ("", "Capsule", "restic", "Capsule advantage", "target")
    table = [header]
    targets = results["targets"]
    for label, capsule, restic, higher, fmt, target in _rows(results):
        advantage = "" if higher is None else _advantage(capsule, restic, higher)
        table.append(
            (label, fmt(capsule), fmt(restic), advantage, targets[target]["verdict"] if target else "")
        )
    lines.extend(align_columns(table))
    lines.append("")
    lines.append("Capsule advantage: >1 means Capsule is better (faster, smaller, leaner).")
    for name in results["tools"]:
        slow = sorted(_get(results, name, "first_backup", "writer_slow_commits") or [], key=lambda c: -c[1])
        if slow:
            worst = ", ".join(f"{c[1]:.0f} ms at {c[0]:+.2f} s{_run_number(c)}" for c in slow[:3])
            lines.append(f"{name}: slowest writer commits, from the backup's start: {worst}")
    for name, figures in results["tools"].items():
        if "error" in figures:
            lines.append(f"{name} did not finish: {figures['error']}")
        for failure in _get(results, name, "first_backup", "failed_runs") or []:
            lines.append(f"{name}: a repeated first backup failed: {failure}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def _run_number(commit: list[Any]) -> str:
    return f" (run {commit[2]})" if len(commit) > 2 else ""


def _runs(seconds: list[float] | None) -> str | None:
    return None if not seconds else " / ".join(f"{v:.2f}" for v in seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_database",
        description="Back up, change, back up again and restore a live POS database with "
        "Capsule and restic; print the figures side by side.",
    )
    parser.add_argument("--size", default="1G", help="database size, e.g. 20M, 1G (default 1G)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to create the scratch directory (default: system temp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json-out", type=Path, default=None, help="write all figures as JSON")
    parser.add_argument(
        "--tools", default="capsule,restic", help="comma-separated subset of: capsule, restic"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cold-restore",
        action="store_true",
        help="drop the page cache before every restore (needs root)",
    )
    parser.add_argument(
        "--backup-runs",
        type=int,
        default=3,
        help="first backups per tool, each into a fresh repository, taking turns; the median time "
        "and the worst commit are reported (default 3)",
    )
    parser.add_argument(
        "--restore-runs",
        type=int,
        default=3,
        help="timed restores per tool, taking turns; the median is reported (default 3)",
    )
    parser.add_argument(
        "--verify-runs",
        type=int,
        default=3,
        help="verify --read-data (restic: check --read-data) runs per tool, taking turns; the "
        "median time and CPU time are reported (default 3)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wanted = {name.strip() for name in args.tools.split(",") if name.strip()}
    if unknown := wanted - {"capsule", "restic"}:
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    with scratch_directory(args.workdir, "capsule-bench-", keep=args.keep) as scratch:
        if min(args.restore_runs, args.backup_runs, args.verify_runs) < 1:
            raise SystemExit("--restore-runs, --backup-runs and --verify-runs must be at least 1")
        results = run_benchmark(
            parse_size(args.size),
            scratch,
            wanted,
            args.seed,
            args.restore_runs,
            backup_runs=args.backup_runs,
            cold_restore=args.cold_restore,
            verify_runs=args.verify_runs,
        )
    print(render_report(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str))
    # Targets missed are figures to read; Capsule failing to finish, or failing once, is an error.
    capsule = results["tools"].get("capsule", {})
    return 1 if "error" in capsule or _get(results, "capsule", "first_backup", "failed_runs") else 0


if __name__ == "__main__":
    sys.exit(main())
