"""The database benchmark's own arithmetic: the restore time is the median of the tools' turns."""

from __future__ import annotations

from benchmarks.bench_database import _runs, fold_restore_runs
from benchmarks.common import MB


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
