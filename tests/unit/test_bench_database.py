"""The database benchmark's own arithmetic: first backup and restore times are medians of the tools'
turns, and the writer's worst commit is the worst of any run."""

from __future__ import annotations

from benchmarks.bench_database import (
    _runs,
    fold_first_backup_runs,
    fold_restore_runs,
    fold_verify_runs,
    render_report,
)
from benchmarks.common import MB, Benchmark


def test_restore_time_becomes_the_median_of_the_runs_and_the_extra_runs_are_folded_in():
    results = {
        "capsule": {
            "restore": {
                "seconds": 4.0,
                "sync_seconds": 0.0,
                "bytes": 1000 * MB,
                "mb_per_s": 250.0,
                "consistent": True,
            },
            "restore_2": {"seconds": 3.0, "sync_seconds": 0.25, "peak_rss_bytes": 1},
            "restore_3": {"seconds": 3.5, "sync_seconds": 0.0, "peak_rss_bytes": 1},
        },
        "restic": {
            "restore": {"seconds": 3.2, "sync_seconds": 3.0, "bytes": 1000 * MB, "mb_per_s": 312.5},
            "restore_2": {"failed": "no space left"},  # a failed turn is left out, not counted as 0
            "restore_3": {"seconds": 4.4},  # from before syncs were timed: counted as none
        },
        "borg": {"error": "first_backup: not installed"},
    }
    fold_restore_runs(results, ["restore_2", "restore_3"])
    capsule, restic = results["capsule"], results["restic"]
    assert capsule == {
        "restore": {
            "seconds": 3.5,
            "first_seconds": 4.0,
            "runs_seconds": [4.0, 3.0, 3.5],
            "sync_seconds": 0.0,
            "on_disk_runs_seconds": [4.0, 3.25, 3.5],
            "on_disk_seconds": 3.5,
            "bytes": 1000 * MB,
            "mb_per_s": 285.71,
            "consistent": True,
        }
    }
    assert restic["restore"]["runs_seconds"] == [3.2, 4.4]
    assert restic["restore"]["seconds"] == 3.8
    # Until on disk: the restore and the sync after it, which restic leaves to the system.
    assert restic["restore"]["on_disk_runs_seconds"] == [6.2, 4.4]
    assert restic["restore"]["on_disk_seconds"] == 5.3
    assert "restore_2" not in restic and "restore_3" not in restic
    assert results["borg"] == {"error": "first_backup: not installed"}
    assert _runs([3.2, 4.4]) == "3.20 / 4.40"
    assert _runs(None) is None


def test_the_capsule_script_beside_the_interpreter_comes_before_one_on_the_path(tmp_path, monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "compile_checkout", lambda: None)
    bin_dir, shims = tmp_path / "bin", tmp_path / "shims"
    for folder in (bin_dir, shims):
        folder.mkdir()
        script = folder / "capsule"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(shims))
    monkeypatch.setattr(common.sys, "executable", str(bin_dir / "python3"))
    assert common.capsule_command() == [str(bin_dir / "capsule")]
    (bin_dir / "capsule").unlink()
    assert common.capsule_command() == [str(shims / "capsule")]


class _Restorer:
    """A tool whose restore writes a small file and notes whether the page cache was dropped first."""

    name = "fake"

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def restore(self, target):
        from benchmarks.common import CommandResult

        self.events.append("restore")
        restored = target / "pos.db"
        restored.write_bytes(b"x" * 4096)
        result = CommandResult(argv=[], seconds=1.0, peak_rss_bytes=1, returncode=0, stdout="", stderr="")
        return result, restored


def test_with_cold_restores_every_restore_turn_starts_from_a_dropped_page_cache(tmp_path, monkeypatch):
    import pytest

    from benchmarks import bench_database

    events: list[str] = []
    refusal: list[str | None] = [None]

    def dropping() -> str | None:
        events.append("drop")
        return refusal[0]

    monkeypatch.setattr(bench_database, "drop_page_cache", dropping)
    monkeypatch.setattr(bench_database, "timed_sync", lambda: 0.0)
    tool = _Restorer(events)
    bench_database.step_restore_again(tool, tmp_path, drop=True)
    bench_database.step_restore_again(tool, tmp_path, drop=False)
    assert events == ["drop", "restore", "restore"]
    refusal[0] = "not allowed"
    with pytest.raises(RuntimeError, match="could not drop the page cache"):
        bench_database.step_restore_again(tool, tmp_path, drop=True)
    assert bench_database._page_cache_setting(True, "not allowed") == (
        "warm: it could not be dropped (not allowed)"
    )
    assert "dropped before every restore" in bench_database._page_cache_setting(True)
    assert bench_database._page_cache_setting(False) == "warm (caches are not dropped)"


def _first(seconds: float, prepare: float, rss: int, worst_ms: float, slow: list[list[float]]) -> dict:
    return {
        "seconds": seconds,
        "prepare_seconds": prepare,
        "source_bytes": 1000 * MB,
        "mb_per_s": 1000 / seconds,
        "peak_rss_bytes": rss,
        "writer": {"commits": 10, "max_ms": worst_ms, "p99_ms": 1.0, "p50_ms": 0.2, "errors": 0},
        "writer_slow_commits": slow,
        "report": {"totals": {"duration_seconds": seconds - 0.5}},
    }


def test_first_backup_time_is_the_median_and_the_worst_commit_the_worst_of_any_run():
    results = {
        "capsule": {
            "first_backup": _first(10.0, 0.0, 150 * MB, 20.0, [[1.0, 20.0]]),
            "first_backup_2": _first(8.0, 0.0, 190 * MB, 61.5, [[2.5, 61.5], [3.0, 7.0]]),
            "first_backup_3": _first(9.0, 0.0, 170 * MB, 12.0, []),
        },
        "restic": {
            "first_backup": _first(9.0, 1.0, 70 * MB, 30.0, []),
            "first_backup_2": {"failed": "disk full"},
            "first_backup_3": _first(12.0, 2.0, 80 * MB, 25.0, []),
        },
        "borg": {"error": "init: not installed"},
    }
    fold_first_backup_runs(results, ["first_backup_2", "first_backup_3"])
    capsule, restic = results["capsule"]["first_backup"], results["restic"]["first_backup"]
    assert set(results["capsule"]) == {"first_backup"} and set(results["restic"]) == {"first_backup"}
    assert capsule["runs_seconds"] == [10.0, 8.0, 9.0]
    assert capsule["first_seconds"] == 10.0
    assert capsule["seconds"] == 9.0
    assert capsule["mb_per_s"] == 111.11
    assert capsule["peak_rss_bytes"] == 190 * MB
    # One slow commit in any run fails the target: the worst counts, not the median.
    assert capsule["writer"]["max_ms"] == 61.5
    assert capsule["writer"]["max_ms_runs"] == [20.0, 61.5, 12.0]
    assert sorted(capsule["writer_slow_commits"]) == [[1.0, 20.0, 1], [2.5, 61.5, 2], [3.0, 7.0, 2]]
    assert "failed_runs" not in capsule
    # A failed turn is left out of the median and said, not counted as zero.
    assert restic["runs_seconds"] == [9.0, 12.0]
    assert restic["seconds"] == 10.5
    assert restic["mb_per_s_with_prepare"] == round(1000 / 12.0, 2)
    assert restic["failed_runs"] == ["disk full"]
    assert results["borg"] == {"error": "init: not installed"}


def test_the_report_names_the_run_of_each_slow_commit_and_any_failed_run():
    results = {
        "settings": {
            "database_bytes": 1000 * MB,
            "page_size": 4096,
            "generate_seconds": 1.0,
            "page_cache": "warm",
            "restic_source": "copy",
        },
        "writer_baseline": {"max_ms": 20.0, "p99_ms": 10.0, "commits": 100},
        "mutation": {"changed_pages": 10, "total_pages": 1000, "changed_bytes": 40960},
        "tools": {
            "capsule": {
                "first_backup": _first(10.0, 0.0, 150 * MB, 20.0, [[1.0, 20.0]]),
                "first_backup_2": _first(8.0, 0.0, 190 * MB, 61.5, [[2.5, 61.5]]),
                "first_backup_3": {"failed": "repository locked"},
            }
        },
    }
    fold_first_backup_runs(results["tools"], ["first_backup_2", "first_backup_3"])
    from benchmarks.bench_database import evaluate_targets

    results["targets"] = evaluate_targets(results)
    assert results["targets"]["writer_max_commit_le_50ms"]["verdict"] == "FAIL"
    report = render_report(results)
    assert "62 ms at +2.50 s (run 2), 20 ms at +1.00 s (run 1)" in report
    assert "capsule: a repeated first backup failed: repository locked" in report
    assert "10.00 / 8.00" in report


def test_verify_time_and_cpu_time_become_the_medians_of_the_runs():
    results = {
        "capsule": {
            "verify": {"seconds": 3.0, "cpu_seconds": 5.0, "peak_rss_bytes": 10},
            "verify_2": {"seconds": 2.0, "cpu_seconds": 4.0, "peak_rss_bytes": 30},
            "verify_3": {"seconds": 2.5, "cpu_seconds": 4.5, "peak_rss_bytes": 20},
        },
        "restic": {
            "verify": {"seconds": 4.0, "cpu_seconds": 3.0, "peak_rss_bytes": 5},
            "verify_2": {"failed": "interrupted"},
            "verify_3": {"seconds": 5.0, "cpu_seconds": 3.5, "peak_rss_bytes": 5},
        },
    }
    fold_verify_runs(results, ["verify_2", "verify_3"])
    assert results["capsule"] == {
        "verify": {
            "seconds": 2.5,
            "cpu_seconds": 4.5,
            "runs_seconds": [3.0, 2.0, 2.5],
            "runs_cpu_seconds": [5.0, 4.0, 4.5],
            "peak_rss_bytes": 30,
        }
    }
    restic = results["restic"]["verify"]
    assert (restic["seconds"], restic["cpu_seconds"], restic["failed_runs"]) == (4.5, 3.25, ["interrupted"])


def test_a_reversed_step_runs_the_last_tool_first():
    class Tool:
        def __init__(self, name):
            self.name = name

    order = []
    bench = Benchmark([Tool("capsule"), Tool("restic")], lambda message: None)
    bench.step("verify", lambda t: order.append(t.name) or {})
    bench.step("verify_2", lambda t: order.append(t.name) or {}, reverse=True)
    assert order == ["capsule", "restic", "restic", "capsule"]
