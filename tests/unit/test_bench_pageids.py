"""The page id benchmark runs end to end on a few MiB and reports both ways and their ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_pageids import main


def test_bench_pageids_times_both_ways_and_reports_the_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pageids.json"
    assert main(["--mib", "4", "--runs", "1", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mib"] == 4 and result["page_size"] == 4096
    for way in ("native", "one by one", "whole"):
        assert result[way]["ms_per_mib"] > 0
    assert result["ratio"] == result["one by one"]["ms_per_mib"] / result["native"]["ms_per_mib"]
    assert "one by one / native" in capsys.readouterr().out
