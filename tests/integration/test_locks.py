"""Repository locks: stale ones are cleared (and said so), live ones are respected."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule.adapters.repository.lock import lock_record, process_start_time
from tests.integration.helpers import Shop, log_events, one_line_error

# One attempt: a backup job would otherwise retry a locked repository with backoff, as it should.
NO_WAIT = {"CAPSULE_LOCK_WAIT_SECONDS": "0", "CAPSULE_STEP_MAX_ATTEMPTS": "1"}
OTHER_HOST = "till-2.other-shop.example"


def write_lock(
    shop: Shop,
    *,
    pid: int,
    process_start: str | None,
    exclusive: bool = True,
    hostname: str | None = None,
    refreshed: float | None = None,
    operation: str = "backup",
) -> Path:
    path = shop.repository / "locks" / os.urandom(16).hex()
    path.write_bytes(
        lock_record(pid, process_start, exclusive, operation, hostname=hostname, refreshed=refreshed)
    )
    return path


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead_process() -> tuple[int, str | None]:
    """The PID and start time of a process of this host that has exited and been reaped."""
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start_time(proc.pid)
    proc.kill()
    proc.wait()
    assert process_start_time(proc.pid) is None
    return proc.pid, start


def stale_removals(stderr: str) -> list[str]:
    events = log_events(stderr)
    return [e.get("lock", "") for e in events if e.get("event") == "removed a stale repository lock"]


def test_backup_removes_the_exclusive_lock_of_a_dead_process_and_logs_the_removal(
    shop: Shop, dead_process: tuple[int, str | None]
) -> None:
    pid, start = dead_process
    lock = write_lock(shop, pid=pid, process_start=start)

    proc = shop.run("backup", env=NO_WAIT, expect=0)

    assert not lock.exists()
    removed = stale_removals(proc.stderr)
    assert len(removed) == 1 and f"PID {pid}" in removed[0], proc.stderr
    assert shop.lock_files() == []
    assert len(shop.snapshots()) == 1


def test_lock_of_a_reused_pid_with_another_start_time_is_stale(shop: Shop) -> None:
    # This test's own process is alive, but it is not the process that took the lock.
    lock = write_lock(shop, pid=os.getpid(), process_start="1")
    proc = shop.run("backup", env=NO_WAIT, expect=0)
    assert not lock.exists()
    assert any(f"PID {os.getpid()}" in r for r in stale_removals(proc.stderr))


def test_backup_fails_with_exit_4_naming_the_pid_of_a_live_exclusive_lock(
    shop: Shop, live_process: subprocess.Popen[bytes]
) -> None:
    pid = live_process.pid
    lock = write_lock(shop, pid=pid, process_start=process_start_time(pid))

    proc = shop.run("backup", env=NO_WAIT, expect=4)

    message = one_line_error(proc)
    assert f"PID {pid}" in message, message
    assert "capsule unlock" in message
    assert lock.exists()
    assert shop.lock_files() == [lock]
    assert shop.snapshots() == []


def test_a_live_shared_lock_lets_a_backup_run_but_blocks_an_index_rebuild(
    shop: Shop, live_process: subprocess.Popen[bytes]
) -> None:
    pid = live_process.pid
    lock = write_lock(shop, pid=pid, process_start=process_start_time(pid), exclusive=False)

    shop.run("backup", env=NO_WAIT, expect=0)
    rebuild = shop.run("rebuild-index", env=NO_WAIT, expect=4)

    assert f"PID {pid}" in one_line_error(rebuild)
    assert lock.exists()
    assert len(shop.snapshots()) == 1


def test_unlock_removes_only_stale_locks_and_unlock_all_removes_the_rest(
    shop: Shop, live_process: subprocess.Popen[bytes], dead_process: tuple[int, str | None]
) -> None:
    dead_pid, dead_start = dead_process
    live_pid = live_process.pid
    stale = write_lock(shop, pid=dead_pid, process_start=dead_start)
    live = write_lock(shop, pid=live_pid, process_start=process_start_time(live_pid))

    first = shop.run("unlock", expect=0)
    assert not stale.exists()
    assert live.exists()
    assert f"PID {dead_pid}" in first.stdout and f"PID {live_pid}" not in first.stdout

    again = shop.run("unlock", expect=0)
    assert "No stale locks" in again.stdout
    assert live.exists()

    everything = shop.run("unlock", "--all", expect=0)
    assert f"PID {live_pid}" in everything.stdout
    assert shop.lock_files() == []
    shop.run("backup", env=NO_WAIT, expect=0)


def test_an_expired_lock_from_another_host_is_cleared_but_a_fresh_one_blocks(shop: Shop) -> None:
    old = time.time() - 7200
    expired = write_lock(shop, pid=4242, process_start=None, hostname=OTHER_HOST, refreshed=old)
    proc = shop.run("backup", env=NO_WAIT, expect=0)
    assert not expired.exists()
    assert any(OTHER_HOST in r for r in stale_removals(proc.stderr))

    # A lock refreshed a moment ago on another machine may belong to a running backup there.
    fresh = write_lock(shop, pid=4242, process_start=None, hostname=OTHER_HOST)
    blocked = shop.run("backup", env=NO_WAIT, expect=4)
    assert OTHER_HOST in one_line_error(blocked)
    shop.run("unlock", expect=0)
    assert fresh.exists()
    assert len(shop.snapshots()) == 1
