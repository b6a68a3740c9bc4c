"""The prune lock: shared with backups, never two prunes, and exclusive operations still wait.

And the owners of the other locks, which prune waits on: the same owner across its lock's refreshes
(each refresh writes a file of a new name), gone once its process ends or dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule.adapters.errors import RepositoryLocked
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import PRUNE, Owner, lock_owners, locked, owners_gone, read_locks
from capsule.adapters.repository.repo import Repository


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(tmp_path / "repo")
    Repository.init(backend, tmp_path / "key")
    return backend


def test_a_second_prune_is_refused_naming_the_first(backend: LocalBackend) -> None:
    with locked(backend, PRUNE), pytest.raises(RepositoryLocked) as refused, locked(backend, PRUNE):
        pass
    message = str(refused.value)
    assert "another prune is running" in message
    assert f"PID {os.getpid()}" in message
    assert "capsule unlock" in message


def test_backups_run_beside_a_prune_and_exclusive_operations_wait(backend: LocalBackend) -> None:
    with locked(backend, PRUNE):
        with locked(backend, "backup"), locked(backend, "restore", reading=True):
            assert len(read_locks(backend)) == 3
        with (
            pytest.raises(RepositoryLocked, match="lock for prune"),
            locked(backend, "rebuild-index", exclusive=True),
        ):
            pass
    with (
        locked(backend, "repair", exclusive=True),
        pytest.raises(RepositoryLocked, match="lock for repair"),
        locked(backend, PRUNE),
    ):
        pass
    assert not read_locks(backend)


HOLDER = """
import sys, time
from pathlib import Path
from capsule.adapters.repository import lock
from capsule.adapters.repository.backends.local import LocalBackend
lock.REFRESH_EVERY = 0.1
with lock.locked(LocalBackend(Path(sys.argv[1])), sys.argv[2]):
    print("held", flush=True)
    while not Path(sys.argv[3]).exists():  # released when the test says so
        time.sleep(0.02)
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _hold(
    backend: LocalBackend, operation: str, release: Path, procs: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(backend.root), operation, str(release)],
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_owners_are_the_same_across_refreshes_and_gone_when_their_process_ends(
    backend: LocalBackend, holders: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    short = _hold(backend, "backup", release, holders)
    killed = _hold(backend, "restore", tmp_path / "never", holders)
    with locked(backend, PRUNE):
        owners = lock_owners(backend)
        assert sorted(o.pid for o in owners) == sorted([short.pid, killed.pid])
        assert {o.operation for o in owners} == {"backup", "restore"}
        names = {i.name for i in read_locks(backend)}
        time.sleep(0.5)  # several refreshes: new lock files, the same owners
        assert {i.name for i in read_locks(backend)} - names
        assert lock_owners(backend) == owners
        assert not owners_gone(backend, owners)

        release.write_text("")
        short.wait(timeout=30)
        assert not owners_gone(backend, owners), "the restore still runs"
        killed.kill()
        killed.wait()
        assert owners_gone(backend, owners)
        assert lock_owners(backend) == []


def test_an_owner_round_trips_through_json(backend: LocalBackend) -> None:
    with locked(backend, "backup"):
        (owner,) = lock_owners(backend)
    assert Owner.from_json(owner.to_json()) == owner
    assert owner.created is not None and owner.process_start is not None
