"""One job at a time per database: a backup never reads a database while a restore replaces it.

An advisory lock (flock) on a file named after the database's path, in Capsule's home. The kernel
drops it when its process dies, however it dies, so a crashed job never leaves it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from capsule.adapters.logs import get_logger
from capsule.domain.errors import CapsuleError, Category

log = get_logger(__name__)


class SourceBusy(CapsuleError):
    """Raised when another job holds the database for longer than the lock wait allows; its
    message names the holder (job, PID, host, since when), as the lock file records it."""

    category = Category.LOCKED


def _lock_path(home: Path, database: Path) -> Path:
    key = hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]
    return home / "locks" / f"source-{key}.lock"


@contextlib.contextmanager
def source_lock(home: Path, database: Path, holder: str, timeout: float) -> Iterator[None]:
    """Hold `database` for one job; wait up to `timeout` seconds for another job to let it go.
    `holder` names the job; the lock file records it with this process's PID, host and the time."""
    path = _lock_path(home, database)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                other = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another job"
                if time.monotonic() >= deadline:
                    raise SourceBusy(
                        f"{database} is in use by {other}; wait for it to finish, then run this again"
                    ) from None
                if not said:
                    # Once: a backup asked for during an in-place restore says why it does not start.
                    log.info(
                        "waiting for the database",
                        database=str(database),
                        held_by=other,
                        up_to_seconds=timeout,
                    )
                    said = True
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        # Local time: the person reading the message compares it with the clock on the wall.
        since = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        who = f"{holder} (PID {os.getpid()} on {socket.gethostname()}, since {since})"
        os.pwrite(fd, who.encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
