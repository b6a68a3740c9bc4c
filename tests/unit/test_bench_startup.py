"""The start-up benchmark times every row with both tools, the tools taking turns, and reports
each median, their ratio and the target."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import bench_startup


def test_every_row_is_timed_for_both_tools_and_reported(tmp_path: Path) -> None:
    true = shutil.which("true")
    assert true is not None
    results = bench_startup.measure([true], true, cenv={}, renv={}, cwd=tmp_path, runs=3)

    assert list(results) == [row.name for row in bench_startup.ROWS]
    for row in bench_startup.ROWS:
        figures = results[row.name]
        assert len(figures["capsule"]["runs_seconds"]) == len(figures["restic"]["runs_seconds"]) == 3
        assert figures["ratio"] == figures["capsule"]["median_seconds"] / figures["restic"]["median_seconds"]
        assert figures["target_seconds"] == row.target_seconds
    table = bench_startup.report(results, 3)
    assert "capsule --help" in table and "capsule status (restic snapshots --latest 1)" in table
    assert table.count("PASS") + table.count("FAIL") == 3


def test_a_baseline_build_takes_its_turns_and_gets_its_columns(tmp_path: Path) -> None:
    true = shutil.which("true")
    assert true is not None
    results = bench_startup.measure([true], true, cenv={}, renv={}, cwd=tmp_path, runs=3, baseline=[true])
    assert all(len(r["baseline"]["runs_seconds"]) == 3 for r in results.values())
    assert "baseline cpu" in bench_startup.report(results, 3)


def test_a_command_that_fails_stops_the_benchmark_with_its_message(tmp_path: Path) -> None:
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(SystemExit, match="exited 1"):
        bench_startup.timed([false], {}, tmp_path)


def test_fewer_than_three_runs_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench_startup.main(["--runs", "2"])


def test_the_modules_are_compiled_where_the_command_imports_them_from() -> None:
    """An editable install imports Capsule's modules through a folder of its own: the bytecode a
    timed command loads must be there, not only beside the checkout's files."""
    import importlib.util

    from benchmarks.common import compile_checkout
    from capsule.domain import retention

    cached = Path(importlib.util.cache_from_source(retention.__file__ or ""))
    cached.unlink(missing_ok=True)  # the suite's start compiled it: see that the benchmark does
    compile_checkout(("domain",))
    assert cached.is_file(), f"no bytecode where the command imports retention from: {cached}"
