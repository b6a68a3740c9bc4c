"""Repository locks: objects of kind `locks` that say who is working on the repository.

They need only what every storage backend offers (write, list, read, stat and remove objects; see
backends/storage.py), so they work the same on a local folder and on a remote store.

Backups, restores and verifies take shared locks: content-addressed packs and uniquely named index and
snapshot files let them run side by side. Operations that replace files wholesale (index rebuild,
repair) take an exclusive lock. Prune deletes without one (its phases keep every running backup
complete, see prune.py): it takes a shared lock with the operation `prune`, which conflicts only
with another prune's and with exclusive locks. `lock_owners` and `owners_gone` tell prune when the
operations that were running at a given moment have all ended.

A lock is refreshed while held; one whose process is gone (same host, dead PID or a PID now used by
another process) or that was not refreshed for STALE_AFTER is stale: it is removed and the removal is
logged, never silently ignored.

A repository that cannot be written (mounted read-only, as a USB disk or a NAS snapshot often is, or
a share this user may only read) can still be read: an operation that only reads it takes no lock
there and logs that it does, since nothing then stops a prune elsewhere from deleting what it reads.
An operation that writes fails with one sentence saying the repository cannot be written.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from capsule.adapters.errors import ObjectNotFound, RepositoryError, RepositoryLocked, RepositoryReadOnly
from capsule.adapters.logs import get_logger
from capsule.adapters.repository.backends.storage import Backend, not_writable

log = get_logger(__name__)

REFRESH_EVERY = 60.0
STALE_AFTER = 30 * 60.0
PRUNE = "prune"
"""The operation of prune's lock: shared, but only one prune at a time."""
KEYS = "keys"
"""The operation of a key change's lock: shared, but one key change at a time, so that two removals
made at once cannot each leave the other's key as the last and then remove it."""
ONE_AT_A_TIME = frozenset({PRUNE, KEYS})

# Lock files are written under this guard, and none once the process is leaving (`stop_locking`).
_WRITING = threading.Lock()
_leaving = False


STOP_WAIT = 5.0
"""Seconds `stop_locking` waits for a lock file being written (a remote store can be slow): Ctrl-C
must not hang on it. A lock written after that is left behind, stale once the process is gone."""


def stop_locking() -> None:
    """Write no lock file from now on, in any thread of this process: one about to take or refresh
    a lock waits for the exit instead. For a process that removes its locks and exits without
    waiting for its threads (Ctrl-C, SIGTERM): a lock a thread of its own wrote after the removal
    listed them would be left behind (tests/integration/test_locks_at_exit.py)."""
    global _leaving  # noqa: PLW0603 - one process, one exit
    waited = _WRITING.acquire(timeout=STOP_WAIT)
    _leaving = True
    if waited:
        _WRITING.release()


def _wait_for_exit() -> NoReturn:
    while True:
        time.sleep(3600)


@dataclass(frozen=True)
class LockInfo:
    name: str
    hostname: str
    pid: int
    process_start: str | None
    exclusive: bool
    operation: str
    refreshed: float
    created: float | None = None
    """When the owner first took the lock (its refreshes keep it); None in older lock files."""

    def describe(self) -> str:
        kind = "an exclusive" if self.exclusive else "a shared"
        # Local time: the person reading it compares it with the clock on the wall.
        since = datetime.fromtimestamp(self.created or self.refreshed).astimezone()
        when = since.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        return f"{kind} lock for {self.operation} by PID {self.pid} on {self.hostname} since {when}"


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live process from a reused PID), if known."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so count from the closing paren.
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or process_start_time(pid) in (None, start)


class RepositoryLock:
    """A held lock; refreshes itself in a background thread until released.

    `reading`: the operation only reads the repository, so where the repository cannot be written it
    goes on without a lock (`held` stays False) instead of failing.
    """

    def __init__(self, backend: Backend, exclusive: bool, operation: str, reading: bool = False) -> None:
        if exclusive and reading:
            raise ValueError("an exclusive lock is for an operation that writes")
        self.backend = backend
        self.exclusive = exclusive
        self.operation = operation
        self.reading = reading
        self.held = False
        self.name = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: float | None = None

    def _write(self) -> str:
        pid = os.getpid()
        name = os.urandom(16).hex()
        self._created = self._created or time.time()
        record = lock_record(
            pid, process_start_time(pid), self.exclusive, self.operation, created=self._created
        )
        with _WRITING:
            if not _leaving:
                self.backend.write("locks", name, record)
                return name
        _wait_for_exit()

    def acquire(self, timeout: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            conflict = self._first_conflict(ignore="")
            if conflict is None:
                try:
                    self.name = self._write()
                except RepositoryReadOnly as e:
                    if not self.reading:
                        raise not_writable(self.backend, e, self.operation) from e
                    self._say_without_lock(e)
                    return
                conflict = self._first_conflict(ignore=self.name)
                if conflict is None:
                    break
                # Someone locked at the same instant: step back, let one of us win.
                self.backend.remove("locks", self.name)
                self.name = ""
            if time.monotonic() >= deadline:
                if self.operation == PRUNE == conflict.operation:
                    raise RepositoryLocked(
                        f"another prune is running ({conflict.hostname}, PID {conflict.pid}); wait for "
                        "it to finish, or run `capsule unlock` if that process is gone"
                    )
                if self.operation == KEYS == conflict.operation:
                    raise RepositoryLocked(
                        f"another key change is running ({conflict.hostname}, PID {conflict.pid}); "
                        "try again when it has finished, or run `capsule unlock` if that process is gone"
                    )
                raise RepositoryLocked(
                    f"the repository is in use: {conflict.describe()}; wait for it to finish, "
                    "or run `capsule unlock` if that process is gone"
                )
            time.sleep(random.uniform(0.05, 0.5))
        self.held = True
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)
        self._thread.start()

    def _say_without_lock(self, error: RepositoryReadOnly) -> None:
        # Once per operation: a restore or verify takes its lock once, a worker says it for each job.
        what = "is read-only" if error.read_only_mount else "cannot be written by this user"
        log.warning(
            f"the repository {what}: reading it without a lock; make sure nothing prunes it meanwhile",
            repository=self.backend.describe(),
            operation=self.operation,
        )

    def _first_conflict(self, ignore: str) -> LockInfo | None:
        for info in read_locks(self.backend):
            if info.name == ignore:
                continue
            if is_stale(info):
                try:
                    remove_stale(self.backend, info)
                except RepositoryReadOnly as e:
                    if not self.reading:
                        raise not_writable(self.backend, e, self.operation) from e
                    # It stays, and a lock no one holds stands in no reader's way.
                continue
            if self.exclusive or info.exclusive:
                return info
            if self.operation == info.operation and self.operation in ONE_AT_A_TIME:
                return info
        return None

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                old, self.name = self.name, self._write()
                self.backend.remove("locks", old)
            except Exception as e:  # a failed refresh must not kill the backup; it is logged
                log.error("could not refresh the repository lock", error=str(e))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.name:
            self.backend.remove("locks", self.name)
            self.name = ""


def lock_record(
    pid: int,
    process_start: str | None,
    exclusive: bool,
    operation: str,
    *,
    hostname: str | None = None,
    refreshed: float | None = None,
    created: float | None = None,
) -> bytes:
    """The bytes of a lock file (format in docs/repository-format.md)."""
    refreshed = time.time() if refreshed is None else refreshed
    body = {
        "version": 1,
        "hostname": hostname or socket.gethostname(),
        "pid": pid,
        "process_start": process_start,
        "exclusive": exclusive,
        "operation": operation,
        "refreshed": refreshed,
        "created": refreshed if created is None else created,
    }
    return json.dumps(body).encode()


def read_locks(backend: Backend) -> list[LockInfo]:
    out = []
    for name in backend.list("locks"):
        try:
            body = json.loads(backend.read("locks", name))
            out.append(
                LockInfo(
                    name,
                    str(body["hostname"]),
                    int(body["pid"]),
                    body.get("process_start"),
                    bool(body["exclusive"]),
                    str(body.get("operation", "unknown")),
                    float(body["refreshed"]),
                    float(body["created"]) if body.get("created") is not None else None,
                )
            )
        except ObjectNotFound:
            continue  # released while we listed
        except (ValueError, KeyError, TypeError, RepositoryError):
            # An unreadable lock (damaged, or another user's on a shared repository) is kept as a
            # conflicting lock with no owner: it expires by age.
            with contextlib.suppress(RepositoryError):
                mtime = backend.stat("locks", name).modified
                out.append(LockInfo(name, "?", 0, None, True, "unreadable lock", mtime))
    return out


def is_stale(info: LockInfo, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if now - info.refreshed > STALE_AFTER:
        return True
    return info.hostname == socket.gethostname() and not pid_alive(info.pid, info.process_start)


def remove_stale(backend: Backend, info: LockInfo) -> None:
    backend.remove("locks", info.name)
    log.warning("removed a stale repository lock", lock=info.describe())


@contextlib.contextmanager
def locked(
    backend: Backend,
    operation: str,
    exclusive: bool = False,
    timeout: float = 0.0,
    *,
    reading: bool = False,
) -> Iterator[RepositoryLock]:
    """Hold a lock for the block. `reading` operations (restore, verify) go on without one where
    the repository cannot be written, and log that once; others fail with RepositoryReadOnly."""
    lock = RepositoryLock(backend, exclusive, operation, reading)
    lock.acquire(timeout)
    try:
        yield lock
    finally:
        lock.release()


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, as it stays across refreshes (a refresh writes a file of a new name)."""

    hostname: str
    pid: int
    process_start: str | None
    created: float | None
    operation: str

    @classmethod
    def of(cls, info: LockInfo) -> Owner:
        return cls(info.hostname, info.pid, info.process_start, info.created, info.operation)

    def to_json(self) -> dict[str, object]:
        return {
            "hostname": self.hostname,
            "pid": self.pid,
            "process_start": self.process_start,
            "created": self.created,
            "operation": self.operation,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Owner:
        created = data.get("created")
        start = data.get("process_start")
        return cls(
            str(data["hostname"]),
            int(str(data["pid"])),
            None if start is None else str(start),
            None if created is None else float(str(created)),
            str(data["operation"]),
        )


def lock_owners(backend: Backend) -> list[Owner]:
    """The owners of every live lock but prune's: the operations that may hold an index loaded now.

    A stale lock is not removed here (the next operation taking a lock does it, and logs it); it
    is only left out.
    """
    live = [info for info in read_locks(backend) if info.operation != PRUNE and not is_stale(info)]
    owners = {Owner.of(info) for info in live}
    return sorted(owners, key=lambda o: (o.hostname, o.pid, o.created or 0.0))


def owners_gone(backend: Backend, owners: list[Owner]) -> bool:
    """Whether none of `owners` holds a live lock any more."""
    return not set(owners) & set(lock_owners(backend))
