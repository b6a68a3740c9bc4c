"""The hourly benchmark times whole commands, processor time included, and reports each mode's
medians and ratios against Capsule."""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from benchmarks import bench_hourly


def test_a_command_s_processor_time_counts_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_hourly, "SETTLE_SECONDS", 0.0)
    busy = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'sum(range(20_000_000))'])"
    wall, cpu = bench_hourly.timed([sys.executable, "-c", busy], dict(os.environ))
    assert cpu > 0.1  # the grandchild's work: a few hundred milliseconds of it
    assert wall >= cpu / 2


def test_a_failing_command_stops_the_benchmark_with_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_hourly, "SETTLE_SECONDS", 0.0)
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(RuntimeError, match="exited with 1"):
        bench_hourly.timed([false], dict(os.environ))


def test_the_report_gives_medians_and_each_tool_over_capsule() -> None:
    capsule = bench_hourly.Tool("capsule", [], {})
    restic = bench_hourly.Tool("restic", [], {})
    for mode in bench_hourly.MODES:
        capsule.runs[mode] = [(2.0, 1.0), (4.0, 3.0), (3.0, 2.0)]
        restic.runs[mode] = [(6.0, 1.5), (6.0, 1.5), (9.0, 2.5)]
    loads = {mode: [1.0, 2.5] for mode in bench_hourly.MODES}
    lines = bench_hourly.report([capsule, restic], loads)
    assert lines[2] == "| no change | 3.00 s (2.00 s) | 6.00 s (1.50 s) | 2.00x | 1.0-2.5 |"
    assert len(lines) == 2 + len(bench_hourly.MODES)


def test_the_scheduled_run_is_due_at_a_whole_minute_with_time_to_read_the_schedule() -> None:
    now = 1_800_000_000.0 + 41.5  # 41.5 s past a whole minute
    due, cron = bench_hourly.next_due(now)
    assert due % 60 == 0 and due - now == 18.5 + 60  # 18.5 s is too little: the minute after
    at = time.gmtime(due)
    assert cron == f"{at.tm_min} {at.tm_hour} * * *"
    due, _ = bench_hourly.next_due(now - 30)  # 11.5 s past: 48.5 s to the next minute is enough
    assert due - (now - 30) == 48.5
