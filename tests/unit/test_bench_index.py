"""The index benchmark runs end to end on a small size and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_index_builds_looks_up_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "index.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_index", "--blobs", "20K", "--json-out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(out.read_text())
    assert result["blobs"] == 20 * 1024
    assert result["runs_in_memory"] >= 1
    assert result["lookup_hits_us"] > 0 and result["restore_lookup_us"] > 0
    assert "20,480" in done.stdout
