"""Ctrl-C and SIGTERM: an interrupted backup is paused and the next backup finishes it at once; an
interrupted restore is cancelled for good and leaves no temporary file; a job whose process is gone
is taken over at once; `capsule cancel` and `capsule unlock` leave no job that looks alive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.repository.lock import lock_record, process_start_time
from tests.integration.helpers import (
    DatabaseTemplates,
    Shop,
    copy_shop,
    describe,
    made_once,
    message_lines,
    running,
)

FAST = {"CAPSULE_STEP_LEASE_SECONDS": "2", "CAPSULE_HEARTBEAT_SECONDS": "0.5", "CAPSULE_SWEEP_SECONDS": "0.3"}
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
PARTIAL = ".capsule-restore-"


def _jobs(shop: Shop) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    return rows


def _start_paused(
    shop: Shop,
    *args: str,
    point: str,
    env: dict[str, str] | None = None,
    pause: int = 30,
    until: Path | None = None,
) -> subprocess.Popen[str]:
    """A `capsule` child held at `point` with a running job, for `pause` seconds or until the file
    `until` exists."""
    hold = f"{point}@until={until}" if until is not None else f"{point}@pause={pause}"
    proc = shop.popen(*args, env={**(FAST if env is None else env), "CAPSULE_FAULTS": hold})
    deadline = time.monotonic() + 60
    while not any(j["status"] == "running" for j in shop.jobs_seen()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr and proc.stderr.read()
        time.sleep(0.2)
    return proc


def _interrupt_when_running(shop: Shop, *args: str, point: str, sig: int = signal.SIGINT) -> tuple[int, str]:
    proc = _start_paused(shop, *args, point=point)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_an_interrupted_backup_is_finished_by_the_next_worker(shop: Shop) -> None:
    code, err = _interrupt_when_running(shop, "backup", point="store:locked")

    assert code == 130
    assert "capsule backup" in err and "Traceback" not in err
    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=120)
    assert [j["status"] for j in _jobs(shop)] == ["completed"]
    assert len(shop.snapshots()) == 1


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signalled_backup_releases_its_lock_and_the_next_backup_finishes_it_at_once(
    shop: Shop, sig: int
) -> None:
    code, err = _interrupt_when_running(shop, "backup", point="store:locked", sig=sig)

    assert code == 130, err
    lines = message_lines(err)
    assert len(lines) == 1 and "run `capsule backup` again" in lines[0], err
    assert shop.lock_files() == []
    assert [j["status"] for j in _jobs(shop)] == ["interrupted"]

    # Default lease (60 s): the next backup neither waits for it nor says a backup is running.
    started = time.monotonic()
    again = shop.run("backup", expect=0)
    took = time.monotonic() - started

    assert took < 30, describe(again)
    assert "another backup" not in again.stderr
    name = signal.Signals(sig).name
    (said,) = [line for line in message_lines(again.stderr) if "finishing it now" in line]
    assert said.endswith(f"was interrupted ({name}); finishing it now"), said
    assert [j["status"] for j in _jobs(shop)] == ["completed"]
    assert len(shop.snapshots()) == 1
    assert shop.lock_files() == []


def test_a_backup_signalled_between_its_two_steps_is_paused_and_the_next_backup_finishes_it(
    shop: Shop, tmp_path: Path
) -> None:
    # Held after its store step completed, before its commit step's first attempt is recorded: no
    # attempt runs, and Ctrl-C must still leave the job interrupted, not running with no process.
    never = tmp_path / "never"
    proc = shop.popen("backup", env={"CAPSULE_FAULTS": f"commit:starting@until={never}"})
    with running(proc):
        deadline = time.monotonic() + 60
        while not any(j["current_step"] == "commit" for j in shop.jobs_seen()):
            assert time.monotonic() < deadline and proc.poll() is None, "the backup never stored its copy"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert [(j["status"], j["current_step"]) for j in _jobs(shop)] == [("interrupted", "commit")], err
    again = shop.run("backup", expect=0)
    (said,) = [line for line in message_lines(again.stderr) if "finishing it now" in line]
    assert said.endswith("was interrupted (SIGINT); finishing it now"), said
    assert [j["status"] for j in _jobs(shop)] == ["completed"]
    assert len(shop.snapshots()) == 1


def test_a_backup_whose_process_was_killed_is_taken_over_at_once_and_said_so(shop: Shop) -> None:
    proc = _start_paused(shop, "backup", point="store:locked", env={})
    with running(proc):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    started = time.monotonic()
    again = shop.run("backup", expect=0)

    assert time.monotonic() - started < 30, describe(again)
    assert f"PID {proc.pid}" in again.stderr and "gone" in again.stderr, describe(again)
    assert "another backup" not in again.stderr
    assert [j["status"] for j in _jobs(shop)] == ["completed"]
    assert len(shop.snapshots()) == 1


def test_an_interrupted_restore_is_cancelled_and_never_resumed(shop: Shop, tmp_path: Path) -> None:
    shop.run("backup", env=FAST, expect=0)
    out = tmp_path / "out"

    code, err = _interrupt_when_running(shop, "restore", "latest", "--to", str(out), point="restore:started")

    assert code == 130
    assert "cancelled" in err
    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=60)
    assert sorted(j["status"] for j in _jobs(shop)) == ["cancelled", "completed"]
    assert not (out / shop.db_name).exists()


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if PARTIAL in p.name) if folder.exists() else []


@pytest.fixture(scope="session")
def backed_up_12m(shared_folder: Path, templates: DatabaseTemplates) -> Shop:
    """A shop whose 12 MiB database is backed up: made once for the run and copied into each test."""

    def make(root: Path) -> None:
        shop = Shop(root)
        templates.copy(shop.database, size_mib=12)
        shop.init()
        made = shop.run("backup", "--json", expect=0, timeout=300)
        # The copies' databases are elsewhere: `latest` (of the configured database) finds none.
        (root / "snapshot-id").write_text(json.loads(made.stdout)["snapshot_id"])

    return Shop(made_once(shared_folder / "backed-up-12m", make))


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signalled_restore_leaves_no_temporary_file(tmp_path: Path, backed_up_12m: Shop, sig: int) -> None:
    shop = copy_shop(backed_up_12m, tmp_path / "shop")
    snapshot_id = (shop.root / "snapshot-id").read_text()
    out = tmp_path / "out"

    # The signal goes as soon as the temporary file appears. Held at `restore:halfway` (reached
    # before the file is checked and put in place), the restore cannot end before the signal lands
    # however fast the machine: a small database makes the point a large one made by taking long.
    proc = shop.popen(
        "restore",
        snapshot_id,
        "--to",
        str(out),
        env={"CAPSULE_WORKERS": "0", "CAPSULE_FAULTS": "restore:halfway@pause=60"},
    )
    with running(proc):
        deadline = time.monotonic() + 120
        while not _partials(out):
            assert time.monotonic() < deadline and proc.poll() is None, "no temporary file was seen"
            time.sleep(0.002)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    lines = message_lines(err)
    assert len(lines) == 1 and "cancelled" in lines[0], err
    assert _partials(out) == []
    assert shop.lock_files() == []


def test_the_next_restore_removes_what_a_dead_restore_left_beside_its_target(
    shop: Shop, tmp_path: Path
) -> None:
    shop.run("backup", expect=0)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = out / f".{shop.db_name}{PARTIAL}{dead.pid}-0badf00d"
    leftover.write_bytes(b"x" * 4096)
    # A live process's temporary file is its own: a restore beside it must leave it alone.
    live = out / f".{shop.db_name}{PARTIAL}{os.getpid()}-0badf00d"
    live.write_bytes(b"y")

    shop.restore("latest", out)

    assert not leftover.exists()
    assert live.exists()
    assert (out / shop.db_name).is_file()


def test_cancel_stops_an_interrupted_backup_and_the_next_backup_starts_afresh(shop: Shop) -> None:
    code, _ = _interrupt_when_running(shop, "backup", point="store:locked")
    assert code == 130
    job_id = _jobs(shop)[0]["job_id"]

    cancelled = shop.run("cancel", job_id, "--json", expect=0)

    row = json.loads(cancelled.stdout)
    assert row["job_id"] == job_id and row["status"] == "cancelled" and row["was"] == "interrupted"
    assert [j["status"] for j in _jobs(shop)] == ["cancelled"]
    again = shop.run("cancel", job_id, expect=1)
    assert "already" in again.stderr and job_id in again.stderr
    shop.run("backup", expect=0)
    assert sorted(j["status"] for j in _jobs(shop)) == ["cancelled", "completed"]


def test_cancel_of_a_running_backup_releases_its_lock_and_makes_no_snapshot(shop: Shop) -> None:
    # Held until the cancel is recorded, however long it takes to start, then let go.
    release = shop.root / "release-the-backup"
    proc = _start_paused(shop, "backup", point="store:locked", until=release)
    with running(proc):
        job_id = _jobs(shop)[0]["job_id"]
        try:
            out = shop.run("cancel", job_id, expect=0)
        finally:
            release.touch()
        assert job_id in out.stdout and "Cancelled" in out.stdout
        _, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    assert "cancelled" in err
    assert [j["status"] for j in _jobs(shop)] == ["cancelled"]
    assert shop.snapshots() == []
    assert shop.lock_files() == []


def test_cancel_of_an_unknown_job_says_how_to_find_one(shop: Shop) -> None:
    proc = shop.run("cancel", "20990101000000-deadbeef", expect=1)
    assert "capsule jobs" in proc.stderr


def test_unlock_leaves_no_job_that_looks_alive(shop: Shop) -> None:
    proc = _start_paused(shop, "backup", point="store:locked", env={})
    with running(proc):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert [j["status"] for j in _jobs(shop)] == ["running"]

    unlocked = shop.run("unlock", expect=0)

    assert shop.lock_files() == []
    assert [j["status"] for j in _jobs(shop)] == ["interrupted"]
    assert "capsule backup" in unlocked.stdout, describe(unlocked)


def test_a_lock_left_by_a_process_that_exited_is_no_obstacle(shop: Shop) -> None:
    dead = subprocess.Popen(["true"])
    start = process_start_time(dead.pid)
    dead.wait()
    (shop.repository / "locks" / "00dead").write_bytes(lock_record(dead.pid, start, True, "backup"))

    started = time.monotonic()
    shop.run("backup", env={"CAPSULE_LOCK_WAIT_SECONDS": "0"}, expect=0)

    assert time.monotonic() - started < 30
    assert shop.lock_files() == []


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signalled_worker_pauses_its_job_at_once_and_releases_its_lock(shop: Shop, sig: int) -> None:
    code, _ = _interrupt_when_running(shop, "backup", point="store:locked")
    assert code == 130
    worker = _start_paused(shop, "worker", "--until-idle", point="store:locked", env={})
    with running(worker):
        deadline = time.monotonic() + 30
        while not shop.lock_files():
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.1)
        started = time.monotonic()
        worker.send_signal(sig)
        _, err = worker.communicate(timeout=30)

    assert time.monotonic() - started < 10, err
    assert worker.returncode == 130, err
    lines = message_lines(err)
    assert len(lines) == 2 and lines[0].startswith("Worker "), err
    assert "paused" in lines[1] and "capsule worker" in lines[1], err
    assert shop.lock_files() == []
    assert [j["status"] for j in _jobs(shop)] == ["interrupted"]
    shop.run("backup", expect=0)
    assert len(shop.snapshots()) == 1
