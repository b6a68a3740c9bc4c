"""Consistent copies of a live SQLite database, taken through SQLite's backup API.

Never a file copy: committed rows may still sit in the WAL. The copy is made in one backup step so
that SQLite does not restart it each time the shop commits a sale (a stepped backup of a busy database
never finishes). In WAL mode writers keep committing during the copy; in rollback-journal mode they
wait until it is done, because the copy holds a shared lock for its duration.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from adapters.errors import DiskFull, SourceError

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 30_000
SIDE_FILES = ("-wal", "-shm", "-journal")

# SQLite keeps a WAL database's locks as single bytes of its `-shm` file from offset 120: the write
# lock, then the checkpoint lock (SQLite's "WAL-mode File Format", section on the WAL-index locks).
SHM_CHECKPOINT_LOCK = 121
CHECKPOINT_LOCK_WAIT = 2.0  # seconds to wait for a checkpoint the till has running already
FLUSH_PAUSE = 0.002  # seconds between flushes of the database file while the checkpoint writes it
SWITCH_DURING_CHECKPOINT = 1e-5  # seconds: the interpreter's switch interval while checkpointing


@dataclass(frozen=True)
class DatabaseCopy:
    """A consistent copy of the database on local disk, and what it looked like."""

    path: Path
    size: int
    page_size: int
    page_count: int
    journal_mode: str
    seconds: float


def _connect_existing(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise SourceError(
            f"the database {path} does not exist; set CAPSULE_DATABASE to the point-of-sale database file"
        )
    try:
        # mode=rw: never create an empty database where the real one is missing.
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise SourceError(f"{path} cannot be read as an SQLite database: {e}") from e
    return conn


def copy_database(
    source: Path, target: Path, started: Callable[[DatabaseCopy], None] | None = None
) -> DatabaseCopy:
    """Copy `source` consistently into `target` (which must not exist) and describe the copy.

    `started`, if given, learns what the copy will be once its snapshot is fixed, just before SQLite
    writes it: from then on the file grows page by page (see `adapters.livecopy`).
    """
    src = _connect_existing(source)
    guard: CheckpointGuard | None = None
    try:
        journal_mode = str(src.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if journal_mode == "wal":
            guard = CheckpointGuard(source)
            guard.take(CHECKPOINT_LOCK_WAIT)
        target.parent.mkdir(parents=True, exist_ok=True)
        dst = sqlite3.connect(target, isolation_level=None)
        # The copy is read once and deleted: it needs neither a journal nor an fsync, and syncing
        # a gigabyte would compete with the till's own commits for the disk.
        dst.execute("PRAGMA journal_mode=OFF").fetchone()
        dst.execute("PRAGMA synchronous=OFF")
        began = time.perf_counter()
        try:
            # A read transaction of our own: the page count read in it is the snapshot's, and the
            # backup API copies within it rather than opening another.
            src.execute("BEGIN")
            page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
            page_count = int(src.execute("PRAGMA page_count").fetchone()[0])
            if started is not None:
                started(
                    DatabaseCopy(target, page_size * page_count, page_size, page_count, journal_mode, 0.0)
                )
            src.backup(dst, pages=-1)
            src.execute("COMMIT")
            page_count = int(dst.execute("PRAGMA page_count").fetchone()[0])
        except sqlite3.OperationalError as e:
            remove_database_files(target)
            if "full" in str(e).lower():
                raise DiskFull(
                    f"the disk holding {target.parent} is full; free space for a copy of the "
                    "database and run the backup again"
                ) from e
            raise SourceError(f"could not take a consistent copy of {source}: {e}") from e
        finally:
            dst.close()
            if src.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    src.execute("ROLLBACK")
        seconds = time.perf_counter() - began
        if guard is not None:
            guard.checkpoint(src)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {target.parent} is full") from e
        raise
    finally:
        src.close()
        if guard is not None:
            guard.close()  # only now: closing its descriptors drops the process's locks on them
    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{target}{suffix}")
    size = target.stat().st_size
    log.debug("database copied", source=str(source), bytes=size, seconds=round(seconds, 3))
    return DatabaseCopy(target, size, page_size, page_count, journal_mode, seconds)


class CheckpointGuard:
    """Keeps the till's commits short around the copy of a WAL database.

    While the copy's read transaction is open the WAL grows, because nothing written after the
    copy started can be folded into the database yet. Left alone, the till's first commit after
    the copy would fold all of it in (its automatic checkpoint) and make the sale wait for that,
    over a hundred milliseconds for a few seconds of sales. So the backup holds SQLite's checkpoint
    lock from before the copy (the till's automatic checkpoints skip while it is held; SQLite never
    waits for this lock), folds the WAL in itself afterwards, and flushes the database file and the
    WAL to disk as it does, so that the till's next checkpoint does not have to wait for those
    writes either.

    The locks are POSIX record locks, which belong to the process: closing any descriptor of these
    files drops the locks SQLite's own connections in this process hold on them. So `close` must
    come after the process's connection to the database is closed, and only one job at a time may
    touch a database in a process (the source lock sees to that).
    """

    def __init__(self, database: Path) -> None:
        self._database = database
        self._shm_path = f"{database}-shm"
        self._shm = _open_if_present(self._shm_path, os.O_RDWR)
        self._db = _open_if_present(str(database), os.O_RDONLY)
        self._wal = _open_if_present(f"{database}-wal", os.O_RDONLY)
        self._successor: _Successor | None = None
        self.held = False

    def take(self, wait: float) -> bool:
        """Take the checkpoint lock, waiting up to `wait` seconds for a running checkpoint."""
        if self._shm is None:
            return False
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.lockf(self._shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_CHECKPOINT_LOCK)
                self.held = True
                return True
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    log.debug("checkpoint lock not taken", error=str(e))
                    return False
                time.sleep(0.005)  # the till is checkpointing; that takes milliseconds

    def release(self) -> None:
        if self.held and self._shm is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._shm, fcntl.LOCK_UN, 1, SHM_CHECKPOINT_LOCK)
        self.held = False

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """Fold the WAL into the database through `conn`, the connection that made the copy.

        SQLite's lock is the process's lock, so the checkpoint takes the one held here, and
        releases it when done: it is taken again at once, until the database file is on disk.
        """
        stop = threading.Event()
        flusher = threading.Thread(target=self._flush_until, args=(stop,), name="checkpoint-flush")
        flusher.start()
        # Between SQLite letting go of the lock and this thread taking it again, the till may take
        # it. A thread waits up to the switch interval (5 ms) for the interpreter after a call into
        # SQLite; while the checkpoint runs, that wait is kept to microseconds.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_DURING_CHECKPOINT)
        # Where the system has open file description locks, a thread waits for the lock in the
        # kernel, which hands it over the moment SQLite lets go: taking it again from Python
        # afterwards, the till got in first in two backups of three, and its sale then waited
        # 190-300 ms for its own checkpoint behind ours.
        successor = self._successor = _Successor.start(self._shm_path) if self.held else None
        # Should the till still get in first, a reader pinned at the WAL's end as it is now leaves
        # its checkpoint nothing to fold (ours folds all of it), so that it syncs nothing and its
        # sale does not wait. The pin goes once the lock is ours again.
        pin = _pin(self._database)
        began = time.perf_counter()
        try:
            _checkpoint(conn)
        finally:
            checkpointed = time.perf_counter()
            retaken = successor.taken(SUCCESSOR_WAIT) if successor is not None else self.take(0)
            if pin is not None:
                pin.close()
            sys.setswitchinterval(switch)
            stop.set()
            flusher.join()
            self._flush()
            self.release()
            # The successor keeps the lock until `close`: closing its descriptor would drop the
            # locks SQLite's connections in this process hold on the same file.
            # When the till takes the lock between SQLite's release and ours, its own next
            # checkpoint runs at once: these figures tell whether a slow sale came from that.
            log.debug(
                "checkpoint after the copy",
                seconds=round(checkpointed - began, 3),
                flushed_seconds=round(time.perf_counter() - checkpointed, 3),
                lock_kept=retaken,
            )

    def _flush_until(self, stop: threading.Event) -> None:
        while not stop.wait(FLUSH_PAUSE):
            self._flush()

    def _flush(self) -> None:
        for fd in (self._db, self._wal):
            if fd is None:
                continue
            try:
                os.fdatasync(fd)
            except OSError as e:  # the checkpoint's own rules still keep the database safe
                log.debug("flushing the database after the copy failed", error=str(e))

    def close(self) -> None:
        self.release()
        if self._successor is not None:
            self._successor.close(wait=CHECKPOINT_LOCK_WAIT)
            self._successor = None
        for fd in (self._shm, self._db, self._wal):
            if fd is not None:
                os.close(fd)
        self._shm = self._db = self._wal = None


_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
SUCCESSOR_WAIT = 0.05  # seconds for the kernel to hand the lock over once SQLite has let go


def _flock(kind: int, start: int) -> bytes:
    """A `struct flock` for one byte at `start` (l_pid 0, as locks on open file descriptions need),
    with room to spare at the end."""
    return struct.pack("@hhqqi", kind, os.SEEK_SET, start, 1, 0) + bytes(8)


class _Successor:
    """A thread waiting in the kernel for the checkpoint lock, on an open file description of its
    own. Such a lock belongs to that description, not to the process, so SQLite letting go of its
    lock does not drop this one, and the kernel wakes the waiter as soon as SQLite lets go."""

    def __init__(self, fd: int, wait_command: int) -> None:
        self._fd = fd
        self._wait_command = wait_command
        self._mutex = threading.Lock()
        self._got = threading.Event()
        self._closed = False
        self._failed = False
        self._thread = threading.Thread(target=self._wait, name="checkpoint-lock", daemon=True)

    @classmethod
    def start(cls, shm_path: str) -> _Successor | None:
        if _OFD_SETLKW is None:
            return None
        fd = _open_if_present(shm_path, os.O_RDWR)
        if fd is None:
            return None
        successor = cls(fd, _OFD_SETLKW)
        successor._thread.start()
        return successor

    def _wait(self) -> None:
        try:
            fcntl.fcntl(self._fd, self._wait_command, _flock(fcntl.F_WRLCK, SHM_CHECKPOINT_LOCK))
        except OSError as e:
            log.debug("checkpoint lock not awaited", error=str(e))
            with self._mutex:
                self._failed = True
                if self._closed:
                    os.close(self._fd)
            return
        with self._mutex:
            if not self._closed:
                self._got.set()
                return
        # Too late: the backup has moved on, and the till must be free to checkpoint again.
        os.close(self._fd)  # closing the description drops its lock

    def taken(self, wait: float) -> bool:
        """Whether the lock was handed over within `wait` seconds."""
        return self._got.wait(wait)

    def close(self, wait: float = 0.0) -> None:
        """Let go of the lock. If the kernel has not answered yet (the till is checkpointing), wait
        up to `wait` seconds for it: the thread closes its descriptor once answered, and closing a
        descriptor of the file drops this process's POSIX locks on it, so that had better happen
        now than during a later copy of the same database in this process."""
        with self._mutex:
            self._closed = True
            if self._got.is_set() or self._failed:
                os.close(self._fd)
                return
        self._thread.join(wait)
        if self._thread.is_alive():
            log.warning("the checkpoint lock is still held by another process", waited_seconds=wait)


def _open_if_present(path: str, flags: int) -> int | None:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:  # no -shm (another locking mode) or unreadable: copy without the guard
        log.debug("checkpoint guard unavailable", path=path, error=str(e))
        return None


def _pin(database: Path) -> sqlite3.Connection | None:
    """A connection holding a read transaction open on the database as it is now, or None."""
    try:
        pin = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        log.debug("no reader pinned for the checkpoint", error=str(e))
        return None
    try:
        pin.execute("BEGIN")
        pin.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        log.debug("no reader pinned for the checkpoint", error=str(e))
        pin.close()
        return None
    return pin


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Fold into the database the WAL that grew while the copy held its read transaction.

    PASSIVE never blocks a writer; if the till is checkpointing already, this simply does less.
    """
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as e:  # a courtesy to the till, never a reason to fail the backup
        log.debug("checkpoint after the copy skipped", error=str(e))


def in_wal_mode(path: Path) -> bool:
    """Whether the database's header says WAL (its read and write versions are 2); False if unreadable."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def check_database(path: Path, quick: bool = True) -> list[str]:
    """Run SQLite's own check on a database file without leaving -wal/-shm files; [] means ok."""
    uri = f"file:{path}?immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            pragma = "quick_check" if quick else "integrity_check"
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return [str(e)]
    return [] if rows == ["ok"] else rows


def remove_database_files(path: Path) -> None:
    for p in (str(path), *(f"{path}{s}" for s in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def copy_into_live(restored: Path, live: Path) -> None:
    """Replace the live database's content with `restored` through the backup API.

    Connections that the shop holds open see the new content on their next transaction; SQLite
    takes the write lock for the duration, so sales wait for it rather than fail.
    """
    src = sqlite3.connect(f"file:{restored}?immutable=1", uri=True)
    dst = _connect_existing(live)
    try:
        src.backup(dst, pages=-1)
    except sqlite3.Error as e:
        raise SourceError(f"could not write the restored database into {live}: {e}") from e
    finally:
        src.close()
        dst.close()
