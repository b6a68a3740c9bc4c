"""A process leaving on Ctrl-C or SIGTERM leaves no repository lock behind, even one that a thread
of its own was taking while the locks were being removed.

Found from outside: a backup interrupted just as its store step was taking the repository lock
exited 130 with the lock file still there. The main thread lists and removes this process's locks
and exits without waiting for the step's thread (orchestrator/jobrunner._leave); a lock written by
that thread after the listing stayed behind. Here the race is made certain: another thread takes a
lock while the locks are being listed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys, threading, types
from pathlib import Path
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import RepositoryLock
from capsule.orchestrator import steps

root = Path(sys.argv[1])
(root / "locks").mkdir(exist_ok=True)
listed = LocalBackend.list
taking = []

def list_while_a_thread_takes_a_lock(self, kind):
    names = list(listed(self, kind))
    if kind == "locks" and not taking:
        lock = RepositoryLock(LocalBackend(root), exclusive=False, operation="backup")
        taking.append(threading.Thread(target=lock.acquire, daemon=True))
        taking[0].start()
        taking[0].join(1.0)  # it has written its lock, or waits for the exit
    return names

LocalBackend.list = list_while_a_thread_takes_a_lock
steps.release_own_locks(types.SimpleNamespace(repository=root), exiting=True)
print(len(list(listed(LocalBackend(root), "locks"))), flush=True)
os._exit(0)
"""


def test_a_lock_taken_by_another_thread_while_leaving_is_not_left_behind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert list((tmp_path / "locks").iterdir()) == []
