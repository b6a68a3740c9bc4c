"""The page id benchmark runs end to end on a few MiB and reports both ways and their ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pageids_times_both_ways_and_reports_the_ratio(tmp_path: Path) -> None:
    out = tmp_path / "pageids.json"
    argv = ["--mib", "4", "--runs", "1", "--json-out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_pageids", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["mib"] == 4 and result["page_size"] == 4096
    for way in ("native", "one by one", "whole"):
        assert result[way]["ms_per_mib"] > 0
    assert result["ratio"] == result["one by one"]["ms_per_mib"] / result["native"]["ms_per_mib"]
    assert "one by one / native" in done.stdout
