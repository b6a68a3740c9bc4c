"""Repository locks: shared ones coexist, exclusive ones wait, stale ones are removed and logged."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from capsule.adapters.errors import RepositoryLocked
from capsule.adapters.repository import lock as lock_module
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import (
    RepositoryLock,
    is_stale,
    lock_record,
    locked,
    process_start_time,
    read_locks,
)

TWO_HOURS = 2 * 3600


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(tmp_path / "repo")
    backend.create_layout()
    return backend


def write_lock(
    backend: LocalBackend,
    *,
    pid: int,
    hostname: str | None = None,
    process_start: str | None = None,
    exclusive: bool = False,
    operation: str = "backup",
    refreshed: float | None = None,
    name: str = "ab" * 16,
) -> str:
    record = lock_record(pid, process_start, exclusive, operation, hostname=hostname, refreshed=refreshed)
    backend.write("locks", name, record)
    return name


def lock_names(backend: LocalBackend) -> set[str]:
    return set(backend.list("locks"))


def stale_removals(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "removed a stale repository lock"]


@pytest.fixture
def sleeper():
    """A live process that is not us, killed at the end of the test."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_two_shared_locks_coexist(backend):
    with locked(backend, "backup") as first, locked(backend, "verify") as second:
        assert first.name != second.name
        assert lock_names(backend) == {first.name, second.name}
    assert lock_names(backend) == set()


def test_lock_file_says_who_holds_it(backend):
    with locked(backend, "restore") as held:
        (info,) = read_locks(backend)
        assert info.name == held.name
    assert info.pid == os.getpid()
    assert info.hostname == socket.gethostname()
    assert info.process_start == process_start_time(os.getpid())
    assert info.operation == "restore"
    assert info.exclusive is False
    assert not is_stale(info)


def test_exclusive_lock_conflicts_with_a_shared_lock_of_this_live_process(backend):
    with locked(backend, "backup"):
        with pytest.raises(RepositoryLocked) as info:
            RepositoryLock(backend, exclusive=True, operation="rebuild-index").acquire()
        assert f"PID {os.getpid()}" in str(info.value)
        assert "a shared lock for backup" in str(info.value)
    # Once released, the exclusive lock is granted.
    with locked(backend, "rebuild-index", exclusive=True):
        pass


def test_shared_lock_conflicts_with_an_exclusive_lock(backend):
    with locked(backend, "rebuild-index", exclusive=True), pytest.raises(RepositoryLocked, match="exclusive"):
        RepositoryLock(backend, exclusive=False, operation="backup").acquire()


def test_exclusive_lock_conflicts_with_a_lock_of_another_live_process(backend, sleeper):
    write_lock(backend, pid=sleeper.pid, process_start=process_start_time(sleeper.pid))
    with pytest.raises(RepositoryLocked) as info:
        RepositoryLock(backend, exclusive=True, operation="rebuild-index").acquire()
    assert f"PID {sleeper.pid}" in str(info.value)
    assert "capsule unlock" in str(info.value)
    assert len(lock_names(backend)) == 1  # the failed attempt left nothing behind


def test_lock_of_a_process_that_ended_becomes_stale(backend, sleeper):
    name = write_lock(backend, pid=sleeper.pid, process_start=process_start_time(sleeper.pid))
    sleeper.kill()
    sleeper.wait()
    with capture_logs() as logs, locked(backend, "rebuild-index", exclusive=True) as held:
        assert lock_names(backend) == {held.name}
    assert name not in lock_names(backend)
    assert len(stale_removals(logs)) == 1


def test_lock_of_a_dead_pid_on_this_host_is_removed_and_logged(backend):
    pid = dead_pid()
    name = write_lock(backend, pid=pid, exclusive=True, operation="rebuild-index")
    with capture_logs() as logs, locked(backend, "backup") as held:
        assert lock_names(backend) == {held.name}
    assert name not in lock_names(backend)
    (removal,) = stale_removals(logs)
    assert removal["log_level"] == "warning"
    assert f"PID {pid}" in removal["lock"]


def test_lock_of_a_reused_pid_is_stale(backend):
    """Our own PID, but a start time that is not ours: the PID was reused by another process."""
    name = write_lock(backend, pid=os.getpid(), process_start="1", exclusive=True)
    with capture_logs() as logs, locked(backend, "backup"):
        assert name not in lock_names(backend)
    assert len(stale_removals(logs)) == 1


def test_expired_lock_from_another_host_is_removed_and_logged(backend):
    name = write_lock(backend, pid=4242, hostname="till-2", exclusive=True, refreshed=time.time() - TWO_HOURS)
    with capture_logs() as logs, locked(backend, "backup", exclusive=True):
        assert name not in lock_names(backend)
    (removal,) = stale_removals(logs)
    assert "till-2" in removal["lock"]


def test_recent_lock_from_another_host_is_respected(backend):
    """Its PID means nothing here, so only its age can make it stale."""
    name = write_lock(backend, pid=dead_pid(), hostname="till-2", refreshed=time.time() - 60)
    with capture_logs() as logs, pytest.raises(RepositoryLocked) as info:
        RepositoryLock(backend, exclusive=True, operation="rebuild-index").acquire()
    assert "till-2" in str(info.value)
    assert lock_names(backend) == {name}
    assert stale_removals(logs) == []


def test_shared_lock_from_another_host_does_not_block_a_backup(backend):
    write_lock(backend, pid=4242, hostname="till-2")
    with locked(backend, "backup") as held:
        assert held.name in lock_names(backend)


def test_unreadable_lock_file_is_treated_as_conflicting_until_old(backend):
    backend.write("locks", "cd" * 16, b"{ not json")
    with pytest.raises(RepositoryLocked, match="unreadable lock"):
        RepositoryLock(backend, exclusive=False, operation="backup").acquire()
    assert lock_names(backend) == {"cd" * 16}

    old = time.time() - TWO_HOURS
    os.utime(backend.path_of("locks", "cd" * 16), (old, old))
    with capture_logs() as logs, locked(backend, "backup"):
        assert "cd" * 16 not in lock_names(backend)
    assert len(stale_removals(logs)) == 1


def test_lock_missing_fields_is_treated_as_unreadable(backend):
    backend.write("locks", "ef" * 16, json.dumps({"hostname": "till-2"}).encode())
    (info,) = read_locks(backend)
    assert info.exclusive is True
    assert info.operation == "unreadable lock"


def test_waiting_for_a_lock_gives_up_after_the_timeout(backend, sleeper):
    write_lock(backend, pid=sleeper.pid, process_start=process_start_time(sleeper.pid), exclusive=True)
    started = time.monotonic()
    with pytest.raises(RepositoryLocked):
        RepositoryLock(backend, exclusive=False, operation="backup").acquire(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5


def test_held_lock_is_refreshed_and_removed_on_release(backend, monkeypatch):
    monkeypatch.setattr(lock_module, "REFRESH_EVERY", 0.05)
    held = RepositoryLock(backend, exclusive=False, operation="backup")
    held.acquire()
    first_name = held.name
    (first,) = read_locks(backend)
    deadline = time.monotonic() + 5
    while held.name == first_name and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert held.name != first_name
        infos = read_locks(backend)
        assert first_name not in {i.name for i in infos}
        assert all(i.refreshed >= first.refreshed for i in infos)
    finally:
        held.release()
    assert lock_names(backend) == set()


def test_locks_older_than_the_stale_limit_are_stale_whoever_holds_them(backend):
    write_lock(backend, pid=os.getpid(), process_start=process_start_time(os.getpid()))
    (info,) = read_locks(backend)
    assert not is_stale(info)
    assert is_stale(info, now=info.refreshed + lock_module.STALE_AFTER + 1)
