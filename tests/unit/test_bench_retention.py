"""The retention benchmark's own parts: both tools get one policy, every hour's changes are the same
in every run of a history, a history refuses to go on with other options, and the report's
targets follow from its figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from benchmarks import bench_retention
from benchmarks.bench_retention import (
    POLICY,
    START,
    Layout,
    _load_state,
    build_parser,
    capsule_policy_settings,
    change_pages,
    hour_seed,
    hour_time,
    report_lines,
    require_capsule_commands,
    restic_policy_args,
    restic_time,
    snapshot_times,
)
from benchmarks.common import MB, directory_bytes, project_root
from benchmarks.posdb import generate


def test_both_tools_are_given_the_same_policy() -> None:
    args = restic_policy_args()
    restic = {args[i].removeprefix("--keep-"): int(args[i + 1]) for i in range(0, len(args), 2)}
    settings = dict(capsule_policy_settings())
    capsule = {
        key.removeprefix("retention.database.keep_"): int(value)
        for key, value in settings.items()
        if key.startswith("retention.database.keep_")
    }
    # restic keeps no "last N" beyond the periods: Capsule is told to keep none either.
    assert capsule.pop("last") == 0
    assert capsule == restic == POLICY
    assert settings["timezone"] == "UTC"


def test_the_policy_is_the_one_the_issue_names() -> None:
    assert POLICY == {"hourly": 48, "daily": 14, "weekly": 8, "monthly": 12, "yearly": 3}


def test_every_hour_of_a_history_has_its_own_seed_and_the_same_one_in_every_run() -> None:
    seeds = {hour_seed(0, hour) for hour in range(720)} | {hour_seed(1, hour) for hour in range(720)}
    assert len(seeds) == 1440
    assert hour_seed(7, 300) == hour_seed(7, 300)


def test_hours_are_simulated_from_the_start_and_restic_reads_them_in_utc() -> None:
    assert hour_time(0) == START
    assert hour_time(24 * 30) - hour_time(0) == timedelta(days=30)
    moment = datetime(2026, 3, 1, 10, 0, 5, 123000, tzinfo=timezone(timedelta(hours=2)))
    assert restic_time(moment) == "2026-03-01 08:00:05"
    assert restic_time(hour_time(25)) == "2026-01-02 01:00:00"


@pytest.fixture(scope="module")
def small_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "pos.db"
    generate(path, 1024 * 1024, seed=3)
    return path


def _copy(database: Path, to: Path) -> Path:
    to.mkdir()
    shutil.copyfile(database, to / database.name)
    return to / database.name


def test_an_hours_changes_are_the_same_in_every_run_and_differ_from_hour_to_hour(
    small_database: Path, tmp_path: Path
) -> None:
    first, second, other = (_copy(small_database, tmp_path / name) for name in ("a", "b", "c"))
    pages = small_database.stat().st_size // 4096

    changed = change_pages(first, seed=0, hour=5, percent=2)
    assert change_pages(second, seed=0, hour=5, percent=2) == changed
    change_pages(other, seed=0, hour=6, percent=2)

    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert first.read_bytes() != small_database.read_bytes()
    assert 0.01 * pages <= changed <= 0.04 * pages


def test_a_history_goes_on_only_with_the_options_it_was_begun_with(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.history.mkdir()
    begun = {"db_mib": 256, "seed": 0, "change_percent": 1.0}
    # A history begun before `--tools` existed was made with both tools.
    layout.state.write_text(json.dumps({**begun, "hours_done": [{"hour": 0}]}))
    both = {**begun, "tools": ["capsule", "restic"]}

    assert _load_state(layout, both)["hours_done"] == [{"hour": 0}]
    with pytest.raises(SystemExit, match="--db-mib 256") as refused:
        _load_state(layout, {**both, "db_mib": 8})
    assert "another --workdir" in str(refused.value)
    with pytest.raises(SystemExit, match="--tools capsule,restic"):
        _load_state(layout, {**both, "tools": ["capsule"]})
    assert _load_state(Layout(tmp_path / "new"), both) == {**both, "hours_done": []}


def _report(capsule: dict[str, object], restic: dict[str, object]) -> dict[str, object]:
    return {
        "history": {"hours": 720, "db_mib": 256},
        "policy": POLICY,
        "runs": {"capsule": [capsule], "restic": [restic]},
        "medians": {"capsule": capsule, "restic": restic},
    }


def _figures(
    seconds: float, after: int, rss: int, kept: list[str] | None = None, cpu: float | None = None
) -> dict[str, object]:
    kept = KEPT if kept is None else kept
    return {
        "bytes_before": 900 * MB,
        "bytes_after": after,
        "snapshots_before": 720,
        "snapshots_after": len(kept),
        "kept": kept,
        "seconds": seconds,
        "cpu_seconds": seconds / 2 if cpu is None else cpu,
        "peak_rss_bytes": rss,
    }


KEPT = ["2026-01-29 23:00:00", "2026-01-30 00:00:00", "2026-01-30 01:00:00"]


def test_the_targets_pass_when_capsule_is_three_times_faster_smaller_and_under_300_mb() -> None:
    lines = report_lines(_report(_figures(10.0, 300 * MB, 200 * MB), _figures(30.0, 301 * MB, 400 * MB)))
    assert [line for line in lines if line.startswith(("PASS", "FAIL"))] == [
        "PASS  prune at least 3x faster than restic",
        "PASS  repository after prune smaller than restic's",
        "PASS  Capsule peak RSS under 300 MB",
    ]
    assert any(line.startswith("forget + prune time") and "3.00x" in line for line in lines)
    [cpu] = [line for line in lines if line.startswith("forget + prune CPU")]
    assert "5.00 s" in cpu and "15.00 s" in cpu and "3.00x" in cpu
    assert not any(line.startswith("note:") for line in lines)


def test_the_report_shows_each_tools_processor_time_beside_its_wall_time() -> None:
    lines = report_lines(
        _report(_figures(10.0, 300 * MB, 200 * MB, cpu=2.0), _figures(30.0, 301 * MB, 400 * MB, cpu=8.0))
    )
    [row] = [line for line in lines if line.startswith("forget + prune CPU")]
    assert row.split()[4:] == ["2.00", "s", "8.00", "s", "4.00x"]


def test_the_targets_fail_on_figures_that_miss_them_and_different_snapshots_kept_are_noted() -> None:
    lines = report_lines(
        _report(
            _figures(10.1, 300 * MB, 300 * MB, kept=[*KEPT[:2], "2026-01-28 23:00:00"]),
            _figures(30.0, 300 * MB, 100 * MB),
        )
    )
    assert [line.split()[0] for line in lines if line.startswith(("PASS", "FAIL"))] == ["FAIL"] * 3
    [note] = [line for line in lines if line.startswith("note:")]
    assert "Capsule alone kept 1 (2026-01-28 23:00:00)" in note
    assert "restic alone 1 (2026-01-30 01:00:00)" in note


def test_prune_takes_capsules_repack_threshold_as_a_percentage_and_leaves_it_alone_by_default() -> None:
    parse = build_parser().parse_args
    assert parse(["prune", "--workdir", "w", "--repack-unused-percent", "0"]).repack_unused_percent == 0
    assert parse(["prune", "--workdir", "w"]).repack_unused_percent is None
    with pytest.raises(SystemExit):
        parse(["prune", "--workdir", "w", "--repack-unused-percent", "101"])


def test_both_tools_snapshot_listings_are_read_as_utc_seconds() -> None:
    restic = json.dumps([{"time": "2026-01-01T02:00:00.123456789+01:00"}, {"time": "2026-01-01T00:00:00Z"}])
    capsule = json.dumps([{"time": "2026-01-01T00:00:00Z"}, {"time": "2026-01-01T01:00:00Z"}])
    assert snapshot_times(restic) == snapshot_times(capsule) == ["2026-01-01 00:00:00", "2026-01-01 01:00:00"]
    assert snapshot_times("") == []


def test_a_capsule_without_the_commands_the_prune_phase_runs_is_told_what_to_do() -> None:
    capsule = [str(Path(sys.executable).parent / "capsule")]
    with pytest.raises(SystemExit, match="no `capsule no-such-command`:") as missing:
        require_capsule_commands(capsule, ("snapshots", "no-such-command"))
    assert "snapshots" not in str(missing.value)  # a command it has is not named
    assert "--tools restic" in str(missing.value)


def test_a_copy_the_disk_cannot_hold_is_refused_before_it_begins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "repo"
    source.mkdir()
    (source / "pack").write_bytes(b"x" * 4096)
    # other tests free space while this one runs: ask for far more than the disk holds
    monkeypatch.setattr(bench_retention, "SPARE_BYTES", shutil.disk_usage(tmp_path).total + 1)
    with pytest.raises(SystemExit, match="free some space"):
        bench_retention._fresh_copy(source, tmp_path / "copy" / "repo")
    assert not (tmp_path / "copy" / "repo").exists()
    monkeypatch.setattr(bench_retention, "SPARE_BYTES", 0)
    bench_retention._fresh_copy(source, tmp_path / "copy" / "repo")
    assert (tmp_path / "copy" / "repo" / "pack").read_bytes() == b"x" * 4096


def _bench(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": "UTC", "PYTHONPATH": str(project_root())}
    for name in ("CAPSULE_PASSPHRASE", "CAPSULE_KEY_FILE", "CAPSULE_EVENT_STORE_URL", "CAPSULE_BROKER_URL"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_retention", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_a_small_history_dates_both_tools_snapshots_by_the_hour_and_restic_prunes_a_copy(
    tmp_path: Path,
) -> None:
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed (apt-get install restic): the restic half is not run")
    workdir = tmp_path / "bench"
    made = _bench(
        "history", "--workdir", str(workdir), "--db-mib", "2", "--hours", "3", "--json",
        "--min-free-gb", "0.1", tmp_path=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # A second run goes on where the first stopped.
    more = _bench(
        "history", "--workdir", str(workdir), "--db-mib", "2", "--hours", "4", "--json",
        "--min-free-gb", "0.1", tmp_path=tmp_path,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["hours"] == 4
    assert more.stderr.count("hour ") == 1  # only the fourth hour was made

    layout = Layout(workdir)
    hours = [hour_time(h) for h in range(4)]
    capsule_env = layout.capsule_environment([], layout.history)
    capsule = json.loads(
        subprocess.run(
            [str(Path(sys.executable).parent / "capsule"), "snapshots", "--json"],
            env=capsule_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [datetime.fromisoformat(s["time"]) for s in capsule] == hours
    restic = json.loads(
        subprocess.run(
            ["restic", "snapshots", "--json"],
            env=layout.restic_environment(layout.history),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert sorted(datetime.fromisoformat(s["time"]) for s in restic) == hours
    assert {s["hostname"] for s in restic} == {"pos"}

    before = directory_bytes(layout.restic_repository(layout.history))
    pruned = _bench(
        "prune", "--workdir", str(workdir), "--runs", "1", "--tools", "restic", "--json", tmp_path=tmp_path
    )
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    run = report["runs"]["restic"][0]
    assert run["bytes_before"] == before
    assert run["snapshots_before"] == run["snapshots_after"] == 4  # four hours: the policy keeps them all
    assert run["seconds"] > 0 and run["peak_rss_bytes"] > 0
    assert 0 < run["cpu_seconds"] < run["seconds"] * 4  # processor time of restic and its children
    # The history itself is untouched; the copy is gone.
    assert directory_bytes(layout.restic_repository(layout.history)) == before
    assert not (workdir / "prune" / "restic").exists()


def test_a_tool_that_fails_ends_the_prune_phase_with_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = Layout(tmp_path)
    layout.capsule_repository(layout.history).mkdir(parents=True)  # a folder, not a repository
    layout.capsule_home(layout.history).mkdir(parents=True)
    state = {"db_mib": 1, "seed": 0, "change_percent": 1.0, "hours_done": [], "tools": ["capsule"]}
    layout.state.write_text(json.dumps(state))
    assert (
        bench_retention.main(["prune", "--workdir", str(tmp_path), "--runs", "1", "--tools", "capsule"]) == 1
    )
    err = capsys.readouterr().err
    assert "a command failed, so the run has no figures" in err
    assert "capsule snapshots" in err
    assert not (tmp_path / "prune" / "capsule").exists()


def test_without_restic_only_a_run_that_asks_for_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_retention.shutil, "which", lambda name: None)
    assert bench_retention.main(["prune", "--workdir", str(tmp_path), "--tools", "restic"]) == 1
    assert "give --tools capsule" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="holds no history"):
        bench_retention.main(["prune", "--workdir", str(tmp_path), "--tools", "capsule"])


def test_a_hard_linked_copy_written_in_place_is_caught_and_one_replaced_is_not(tmp_path: Path) -> None:
    history, base = tmp_path / "history", tmp_path / "run"
    (history / "repo").mkdir(parents=True)
    (history / "home").mkdir()
    (history / "repo" / "pack").write_bytes(b"p" * 100)
    (history / "home" / "events.db").write_bytes(b"e" * 100)

    def repo(root: Path) -> Path:
        return root / "repo"

    def home(root: Path) -> Path:
        return root / "home"

    with bench_retention.fresh_copies(history, base, repo, home, link=True):
        (base / "home" / "events.db").write_bytes(b"x")  # copied, not linked: the history keeps its own
        replaced = base / "repo" / "pack.new"
        replaced.write_bytes(b"n")
        replaced.replace(base / "repo" / "pack")  # replaced, as a repository's files are
    assert (history / "repo" / "pack").read_bytes() == b"p" * 100
    assert (history / "home" / "events.db").read_bytes() == b"e" * 100
    assert not base.exists()

    with (
        pytest.raises(SystemExit, match="written in place \\(pack\\)"),
        bench_retention.fresh_copies(history, base, repo, home, link=True),
        open(base / "repo" / "pack", "r+b") as pack,  # entered once the copy is made
    ):
        pack.write(b"changed")


@pytest.mark.slow
def test_a_history_stops_before_an_hour_the_disk_has_no_room_for_and_says_how_to_go_on(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "bench"
    free_gb = shutil.disk_usage(tmp_path).free / (1000 * MB)
    stopped = _bench(
        "history", "--workdir", str(workdir), "--db-mib", "1", "--hours", "2", "--tools", "capsule",
        "--min-free-gb", str(free_gb * 2), tmp_path=tmp_path,
    )  # fmt: skip
    assert stopped.returncode == 1
    assert "stopped before hour 1" in stopped.stderr
    assert "run again to go on" in stopped.stderr
    assert json.loads(Layout(workdir).state.read_text())["hours_done"] == []
