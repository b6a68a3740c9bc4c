"""The event log copy benchmark runs on a small log and reports what it measured."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_logcopy import measure


def test_the_log_copy_benchmark_reads_back_every_event_it_sealed(tmp_path: Path) -> None:
    result = measure(tmp_path, 300)

    assert result["events"] == 300
    assert 0 < result["stored_bytes"] < result["document_bytes"]
    assert result["export_cpu_seconds"] >= 0 and result["unchanged_check_seconds"] >= 0
