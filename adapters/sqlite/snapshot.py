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
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capsule.adapters.errors import DiskFull, SourceError
from capsule.adapters.logs import get_logger
from capsule.adapters.source_identity import database_identity
from capsule.domain.manifest import SourceIdentity

log = get_logger(__name__)

BUSY_TIMEOUT_MS = 30_000
SIDE_FILES = ("-wal", "-shm", "-journal")

# SQLite keeps a WAL database's locks as single bytes of its `-shm` file from offset 120: the write
# lock, then the checkpoint lock (SQLite's "WAL-mode File Format", section on the WAL-index locks).
SHM_CHECKPOINT_LOCK = 121
CHECKPOINT_LOCK_WAIT = 2.0  # seconds to wait for a checkpoint the till has running already
FOLD_EVERY = 0.2  # seconds between the keeper's checkpoints, about as often as a busy till's own
HANDBACK_WAIT = 2.0  # seconds the keeper leaves the checkpoints to the till for the WAL to restart
STALL_SECONDS = 2.0  # folds held back this long move the pin on all the same (see CheckpointKeeper._fold)
WAL_LIMIT_MIN = 64 * 1024 * 1024
WAL_FRAME_HEADER = 24
# A thread waits up to the switch interval (5 ms by default) for the interpreter after a system
# call; while the lock changes hands between this process's two holders, the wait is kept to
# microseconds.
SWITCH_DURING_HANDOVER = 1e-5


@dataclass(frozen=True)
class DatabaseCopy:
    """A consistent copy of the database on local disk, and what it looked like."""

    path: Path
    size: int
    page_size: int
    page_count: int
    journal_mode: str
    seconds: float
    identity: SourceIdentity | None = None
    """What the copy is of, as SQLite said in the copy's own read transaction."""


SQLITE_HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file (SQLite's "Database File Format", 1.3)."""


def _check_file(path: Path) -> None:
    """Raise SourceError unless `path` is an existing regular file (links followed)."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise SourceError(
            f"the database {path} does not exist; set CAPSULE_DATABASE to the point-of-sale database file"
        ) from e
    except PermissionError as e:
        raise SourceError(
            f"the database {path} cannot be reached by this user (a folder on its way is closed to it); "
            "run Capsule as the user that owns the database"
        ) from e
    except OSError as e:
        raise SourceError(f"the database {path} cannot be examined ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(
            f"{path} is a folder, not a database file; set CAPSULE_DATABASE to the point-of-sale "
            "database file itself"
        )
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(
            f"{path} is not a regular file; set CAPSULE_DATABASE to the point-of-sale database file"
        )


def check_source(path: Path) -> None:
    """Raise SourceError, with what to do, unless `path` is a database file worth backing up.

    Checked before anything is copied: SQLite itself opens an empty file as a new, empty database,
    which would make a snapshot of nothing. Missing, a folder, unreadable, empty (0 bytes) and not
    SQLite (no `SQLITE_HEADER`) each get their own sentence.
    """
    _check_file(path)
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except PermissionError as e:
        raise SourceError(
            f"the database {path} cannot be read by this user; run Capsule as the user that owns "
            "the database, or give that user read and write access to it"
        ) from e
    except OSError as e:
        raise SourceError(f"the database {path} cannot be read ({e.strerror or e})") from e
    if not header:
        raise SourceError(
            f"the database {path} is empty (0 bytes), so there is nothing to back up and no "
            "snapshot was made; check that CAPSULE_DATABASE names the point-of-sale database, and if "
            "its data was lost, restore the last snapshot: `capsule restore latest-database --in-place`"
        )
    if header != SQLITE_HEADER:
        raise SourceError(
            f"{path} is not an SQLite database (it does not start with SQLite's header); set "
            "CAPSULE_DATABASE to the point-of-sale database file"
        )


def _connect_existing(path: Path, *, any_thread: bool = False) -> sqlite3.Connection:
    _check_file(path)
    try:
        # mode=rw: never create an empty database where the real one is missing.
        conn = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, isolation_level=None, check_same_thread=not any_thread
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise SourceError(f"{path} cannot be read as an SQLite database: {e}") from e
    return conn


def copy_database(
    source: Path,
    target: Path,
    started: Callable[[DatabaseCopy], None] | None = None,
    *,
    keeper: CheckpointKeeper | None = None,
) -> DatabaseCopy:
    """Copy `source` consistently into `target` (which must not exist) and describe the copy.

    `started`, if given, learns what the copy will be once its snapshot is fixed, just before SQLite
    writes it: from then on the file grows page by page (see `capsule.adapters.sqlite.livecopy`).

    A WAL database's checkpoints are kept from the till for the copy's duration (`CheckpointKeeper`),
    or for as long as `keeper`, started by the caller, runs.
    """
    src = _connect_existing(source)
    own_keeper: CheckpointKeeper | None = None
    holding = contextlib.ExitStack()
    try:
        journal_mode = str(src.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if journal_mode == "wal" and keeper is None:
            own_keeper = keeper = CheckpointKeeper(source)
            own_keeper.start()
        if keeper is not None:
            holding.enter_context(keeper.pin_held())  # before the copy's read transaction begins
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A plaintext copy of the shop's sales: only its owner may read it, whatever the umask.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
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
            identity = database_identity(src, source)
            if started is not None:
                started(
                    DatabaseCopy(target, page_size * page_count, page_size, page_count, journal_mode, 0.0)
                )
            src.backup(dst, pages=-1)
            src.execute("COMMIT")
            holding.close()
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
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {target.parent} is full") from e
        raise
    finally:
        holding.close()
        src.close()
        if own_keeper is not None:
            own_keeper.stop()  # only now: see CheckpointKeeper on this process's connections
    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{target}{suffix}")
    size = target.stat().st_size
    log.debug("database copied", source=str(source), bytes=size, seconds=round(seconds, 3))
    return DatabaseCopy(target, size, page_size, page_count, journal_mode, seconds, identity)


class CheckpointKeeper:
    """Runs the till's checkpoints for it while a backup runs, so that no sale waits for one.

    A till in WAL mode commits without syncing anything; every few hundred milliseconds, though,
    one of its commits folds the WAL into the database and syncs both (SQLite's automatic
    checkpoint), and that sale waits for the disk, longer still beside a backup writing packs (see
    docs/performance.md, "The till's own checkpoints"). While the keeper runs it holds SQLite's
    checkpoint lock, a byte of the `-shm` file (the till's automatic checkpoints skip while another
    process holds it; SQLite never waits for it), and a thread of its own folds the WAL in every
    `every` seconds and syncs the database file. The copy's read transaction needs this too:
    nothing written after it started can be folded in until it ends, so without the lock the
    till's first commit after the copy would fold seconds of sales.

    The lock is held on an open file description of the keeper's own (`_OfdLock`): SQLite's locks
    are the process's POSIX locks, which SQLite drops after each checkpoint. For each fold the
    process takes the POSIX lock, SQLite's connection checkpoints under it, and the kernel hands
    the lock back to the keeper's description the moment SQLite lets go. Closing any descriptor
    of the `-shm` file drops every POSIX lock this process holds on it, SQLite's read locks
    included, so none is closed before `stop`.

    A reader stays pinned at the WAL's end as it was when the last fold began. A till that slips
    in while the lock changes hands then folds nothing and syncs nothing; and the till cannot
    restart the WAL, which would sync it inside a sale. So the WAL grows by what the till writes
    meanwhile; past `wal_limit` bytes the keeper hands the checkpoints back until the till's own
    have restarted it.

    Only one job at a time may touch a database in a process (the source lock sees to that), and
    every other connection of this process to it must be closed before `stop`.
    """

    def __init__(self, database: Path, *, every: float = FOLD_EVERY, wal_limit: int | None = None) -> None:
        self._database = database
        self._shm_path = f"{database}-shm"
        self._every = every
        self._wal_limit = wal_limit
        self._shm: int | None = None
        self._db: int | None = None
        self._wal: int | None = None
        self._lock: _OfdLock | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._pinned_at = 0
        self._progress = (-1, 0.0)  # where the folds last got to, and when they got there
        self._frame_bytes = 0  # of a WAL frame: the page and its header
        self._pin_mutex = threading.Lock()
        self._pin_holds = 0
        self._wake = threading.Event()  # a stop or a freeze asked for: no need to wait for the next fold
        self._freezing = threading.Event()
        self._frozen = threading.Event()  # the freeze asked for is done (or could not be)
        self._frozen_at: int | None = None
        self.held = False
        self.folds = 0
        self.handbacks = 0
        self.slowest_fold = 0.0

    def start(self, wait: float = CHECKPOINT_LOCK_WAIT) -> bool:
        """Take the lock (waiting up to `wait` seconds for a checkpoint the till has running) and
        start folding. False if the database has no `-shm` file, the system no open file
        description locks, or the till's checkpoint did not end in time: then the till keeps its
        checkpoints. Whatever it returns, `stop` must follow."""
        if _OFD_SETLKW is None:
            log.debug("checkpoints left to the till: no open file description locks here")
            return False
        # Connected first: reading a WAL database creates its `-shm` file if no till has it open.
        conn = _connect_existing(self._database, any_thread=True)
        self._shm = _open_if_present(self._shm_path, os.O_RDWR)
        self._lock = _OfdLock.open(self._shm_path)
        if self._shm is None or self._lock is None:
            conn.close()
            return False
        self._db = _open_if_present(str(self._database), os.O_RDONLY)
        self._wal = _open_if_present(f"{self._database}-wal", os.O_RDONLY)
        self._lock.request()
        if not self._lock.taken(wait):
            self._lock.release()
            conn.close()
            log.debug("checkpoint lock not taken", waited_seconds=wait)
            return False
        self.held = True
        if self._wal_limit is None:
            self._wal_limit = wal_limit_for(self._database)
        self._thread = threading.Thread(target=self._run, args=(conn,), name="checkpoint-keeper", daemon=True)
        self._thread.start()
        self._ready.wait()
        return True

    def stop(self) -> None:
        """Fold in what is left, sync it, and give the checkpoints back to the till."""
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            self._thread = None
            log.debug(
                "checkpoints given back",
                folds=self.folds,
                handed_back=self.handbacks,
                slowest_fold_seconds=round(self.slowest_fold, 3),
                lock_kept=self.held,
            )
        # Only now, with this process's connections closed (see the class's notes).
        if self._lock is not None:
            self._lock.close(wait=CHECKPOINT_LOCK_WAIT)
            self._lock = None
        self.held = False
        for fd in (self._shm, self._db, self._wal):
            if fd is not None:
                os.close(fd)
        self._shm = self._db = self._wal = None

    def _run(self, conn: sqlite3.Connection) -> None:
        pins = _Pins(self._database)
        try:
            # The checkpoint syncs the WAL before it writes the database: FULL, whatever the default.
            conn.execute("PRAGMA synchronous=FULL")
            self._frame_bytes = int(conn.execute("PRAGMA page_size").fetchone()[0]) + WAL_FRAME_HEADER
            self._pin(pins)  # nothing is folded yet: a till slipping in folds only what it had
            self._ready.set()
            while self.held:
                self._wake.wait(self._every)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                if not self._freezing.is_set():
                    self._fold(conn, pins)
                elif not self._frozen.is_set():  # asked for just now; then no folds until thawed
                    self._frozen_at = self._fold_to_end(conn, pins)
                    self._frozen.set()
            if self.held:
                self._fold(conn, pins)
                self._flush(self._wal)  # the till's next checkpoint syncs the WAL first
        except Exception as e:  # a courtesy to the till, never a reason to fail the backup
            log.warning("checkpoints given back to the till early", error=str(e))
        finally:
            self._frozen.set()  # whoever waits for a freeze learns that there is none
            self._ready.set()
            pins.close()
            conn.close()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[int | None]:
        """Fold the WAL into the database file up to its end, then fold nothing more until the
        block ends: the file itself is then a consistent snapshot, which can be read in place.

        Yields the WAL frame the file holds every commit up to, or None if the WAL could not be
        folded to its end (the till wrote meanwhile, a reader of the shop's held the fold back, or
        the lock was lost): the file is then no snapshot and must not be read as one. While frozen
        nothing writes the file: SQLite writes a WAL database's file only when it checkpoints, and
        each checkpoint needs the lock that the keeper now keeps without handing it over. The
        caller checks `held` once it has read the file: False means the lock was lost meanwhile.
        """
        if self._thread is None or not self.held:
            yield None
            return
        self._frozen.clear()
        self._freezing.set()
        self._wake.set()
        try:
            self._frozen.wait()
            yield self._frozen_at if self.held else None
        finally:
            self._freezing.clear()
            self._frozen_at = None

    def _fold_to_end(self, conn: sqlite3.Connection, pins: _Pins) -> int | None:
        """One fold with the pin moved to the WAL's end first; the frame the file then holds all
        commits up to, or None unless that is the WAL's end."""
        frames = self._frames()
        if frames is not None and frames[0] != frames[1]:
            self._fold(conn, pins, to_end=True)
            frames = self._frames()
        if frames is None or frames[0] != frames[1] or not self.held:
            log.debug("the WAL could not be folded to its end", frames=frames)
            return None
        return frames[1]

    def _fold(self, conn: sqlite3.Connection, pins: _Pins, *, to_end: bool = False) -> None:
        """Fold the WAL up to its end into the database through `conn`, and sync the database.
        `to_end` moves the pin to the WAL's end even before the folds have caught up with it."""
        assert self._lock is not None
        frames = self._frames()
        if frames is not None and frames[0] == frames[1]:
            # Nothing to fold; and a reader beginning now would read the database file alone,
            # which does not keep the till from restarting the WAL: the pinned reader stays.
            return
        # The pin moves on only once the folds have caught up with it. Until then another reader
        # (the copy's, for one) holds them back, and a till slipping in must not fold past them.
        # But the pin itself may be what holds them back: with every read slot of the `-shm` file
        # taken (many connections of the shop's), a reader shares the newest one, which may be
        # older than the WAL's end. Folds that got nowhere for STALL_SECONDS move it on all the
        # same; a reader of the shop's holding them back only lets a till slipping in fold more.
        now = time.monotonic()
        if frames is not None and frames[1] != self._progress[0]:
            self._progress = (frames[1], now)
        stalled = now - self._progress[1] >= STALL_SECONDS
        advance = to_end or frames is None or frames[1] >= self._pinned_at or stalled
        if stalled:
            self._progress = (self._progress[0], now)
        began = time.perf_counter()
        # SQLite checkpoints only under the process's own lock: the keeper's description lets go,
        # and the process takes the lock at once (a till slipping in between folds nothing).
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_DURING_HANDOVER)
        try:
            self._lock.release()
            taken = self._take(CHECKPOINT_LOCK_WAIT)
        finally:
            sys.setswitchinterval(switch)
        if not taken:
            self.held = False
            return
        # Queued behind the process's lock: the kernel hands it over when SQLite lets go.
        self._lock.request()
        try:
            with self._pin_mutex:
                if advance and not self._pin_holds:
                    self._pin(pins)  # at the WAL's end as it is now: the fold's bound
            logged = _checkpoint(conn)
        finally:
            self._release()  # should SQLite not have let go itself
        if not self._lock.taken(CHECKPOINT_LOCK_WAIT):
            self._lock.release()  # and a late answer is let go of at once
            self.held = False
            log.debug("checkpoint lock not handed back")
            return
        # A checkpoint that leaves frames unfolded (the till wrote meanwhile, or a reader holds
        # them) does not sync the database; the till's next complete one would sync it all.
        self._flush(self._db)
        self.folds += 1
        self.slowest_fold = max(self.slowest_fold, time.perf_counter() - began)
        limit = self._wal_limit
        if logged is not None and limit is not None and logged * self._frame_bytes > limit:
            self._hand_back(pins)

    def _hand_back(self, pins: _Pins) -> None:
        """Let the till checkpoint until it has restarted the WAL from its beginning, then take the
        lock again: the WAL stops growing, and one sale waits for one ordinary checkpoint."""
        assert self._lock is not None
        before = self._wal_header()
        pins.close()  # a reader would keep the till's checkpoint from completing
        self._lock.release()
        self.handbacks += 1
        log.debug("checkpoints handed back while the WAL restarts", wal_limit=self._wal_limit)
        deadline = time.monotonic() + HANDBACK_WAIT
        while self._wal_header() == before and time.monotonic() < deadline:
            if self._stopping.wait(0.005):
                break
        self._lock.request()
        if not self._lock.taken(CHECKPOINT_LOCK_WAIT):
            self._lock.release()
            self.held = False
            return
        self._pin(pins)

    @contextlib.contextmanager
    def pin_held(self) -> Iterator[None]:
        """Keep the pinned reader where it is for the block's duration: a copy reading the database
        begins in it. The folds cannot pass the copy's read transaction, and a pin moved past its
        start would let a till slipping in, once the copy is over, fold what came in between."""
        with self._pin_mutex:
            self._pin_holds += 1
        try:
            yield
        finally:
            with self._pin_mutex:
                self._pin_holds -= 1

    def _pin(self, pins: _Pins) -> None:
        """Pin a reader at the WAL's end; remember (at least) where that is.

        Not while the WAL is folded to its end. A reader beginning then reads the database file
        alone (under SQLite's read lock 0), and for as long as it lasts no checkpoint may write that
        file. Once the till had started the WAL over beneath such a pin, the folds could never
        reach where it was taken, so it never moved: every fold of a backup was held back, and the
        till's first checkpoint afterwards folded thousands of pages inside one sale (see
        docs/performance.md, "A pin where the WAL was folded to its end"). Nothing is there to
        fold yet; the first fold that has something pins a reader in the WAL.
        """
        frames = self._frames()
        if frames is not None and frames[0] == frames[1]:
            return
        pins.advance()
        self._pinned_at = frames[0] if frames is not None else 0

    def _frames(self) -> tuple[int, int] | None:
        """The WAL's last frame and the last one folded into the database, as the `-shm` file
        says; None if it cannot be read.

        Its header (SQLite's "WAL-mode File Format", the wal-index header) holds the first at byte
        16, and the checkpoint information that follows two copies of the header the second
        (nBackfill) at byte 96, in the machine's byte order. While the keeper holds the lock only
        its own checkpoints move the second; the first only grows. A read racing the till's commit
        sees the WAL a frame or two short: a stale answer errs towards folding less.
        """
        assert self._shm is not None
        try:
            raw = os.pread(self._shm, 100, 0)
        except OSError:
            return None
        if len(raw) < 100:
            return None
        (last,) = struct.unpack_from("=I", raw, 16)
        (folded,) = struct.unpack_from("=I", raw, 96)
        return (last, folded) if last >= folded else None

    def _wal_header(self) -> bytes:
        """The WAL's checkpoint sequence number and salts, which change when it restarts."""
        if self._wal is None:
            return b""
        try:
            return os.pread(self._wal, 12, 12)
        except OSError:
            return b""

    def _take(self, wait: float) -> bool:
        """Take the checkpoint lock for this process, waiting up to `wait` seconds for a checkpoint
        the till has running."""
        assert self._shm is not None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.lockf(self._shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_CHECKPOINT_LOCK)
                return True
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    log.debug("checkpoint lock lost to the till", error=str(e))
                    return False
                time.sleep(0.001)  # the till is checkpointing; with the pinned reader, briefly

    def _release(self) -> None:
        if self._shm is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._shm, fcntl.LOCK_UN, 1, SHM_CHECKPOINT_LOCK)

    @staticmethod
    def _flush(fd: int | None) -> None:
        if fd is None:
            return
        try:
            os.fdatasync(fd)
        except OSError as e:  # the checkpoint's own rules still keep the database safe
            log.debug("flushing the database after a checkpoint failed", error=str(e))


@contextlib.contextmanager
def checkpoints_kept(database: Path) -> Iterator[CheckpointKeeper | None]:
    """A started keeper for a WAL database for the block's duration; None in another journal mode."""
    if not in_wal_mode(database):
        yield None
        return
    keeper = CheckpointKeeper(database)
    try:
        yield keeper if keeper.start() else None
    finally:
        keeper.stop()


def wal_limit_for(database: Path) -> int:
    """How far the WAL may grow while the keeper holds the checkpoints: half the database, at least
    WAL_LIMIT_MIN, but never past a quarter of the space free beside it."""
    try:
        size = database.stat().st_size
        disk = os.statvfs(database.parent)
        free = disk.f_bavail * disk.f_frsize
    except OSError:
        return WAL_LIMIT_MIN
    return int(min(max(size // 2, WAL_LIMIT_MIN), free // 4))


class _Pins:
    """Two read-only connections taking turns to hold a read transaction open, each from where the
    WAL ended when it began: a checkpoint folds nothing past the one held."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._conns: list[sqlite3.Connection] = []
        self._held: sqlite3.Connection | None = None

    def advance(self) -> None:
        """Hold a read transaction from the WAL's end as it is now, and then let go of the older."""
        if len(self._conns) < 2:
            uri = f"file:{self._database}?mode=ro"
            self._conns.append(sqlite3.connect(uri, uri=True, isolation_level=None))
        new = self._conns[0] if self._held is self._conns[-1] else self._conns[-1]
        new.execute("BEGIN")
        new.execute("SELECT count(*) FROM sqlite_master").fetchone()
        self._end()
        self._held = new

    def _end(self) -> None:
        if self._held is not None:
            with contextlib.suppress(sqlite3.Error):
                self._held.execute("COMMIT")
            self._held = None

    def close(self) -> None:
        self._end()
        for conn in self._conns:
            conn.close()
        self._conns = []


_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)


def _flock(kind: int, start: int) -> bytes:
    """A `struct flock` for one byte at `start` (l_pid 0, as locks on open file descriptions need),
    with room to spare at the end."""
    return struct.pack("@hhqqi", kind, os.SEEK_SET, start, 1, 0) + bytes(8)


class _OfdLock:
    """SQLite's checkpoint lock, held on an open file description of its own.

    Such a lock belongs to the description, not to the process: SQLite letting go of the
    process's lock does not drop it, and it conflicts with the process's own POSIX lock, so a
    request made while the process holds that lock waits in the kernel and is granted the moment
    SQLite lets go. It is let go by unlocking, never by closing the descriptor, which would drop
    the process's POSIX locks on the file as well; `close` comes last.
    """

    def __init__(self, fd: int, wait_command: int, set_command: int) -> None:
        self._fd = fd
        self._wait_command = wait_command
        self._set_command = set_command
        self._mutex = threading.Lock()
        self._got = threading.Event()
        self._answered = threading.Event()  # granted, or refused (a file system without such locks)
        self._abandoned = False
        self._closed = False
        self._waiter: threading.Thread | None = None

    @classmethod
    def open(cls, shm_path: str) -> _OfdLock | None:
        if _OFD_SETLKW is None or _OFD_SETLK is None:
            return None
        fd = _open_if_present(shm_path, os.O_RDWR)
        return None if fd is None else cls(fd, _OFD_SETLKW, _OFD_SETLK)

    def request(self) -> None:
        """Ask the kernel for the lock; `taken` tells when it is granted."""
        assert self._waiter is None, "one request at a time"
        self._got.clear()
        self._answered.clear()
        self._abandoned = False
        self._waiter = threading.Thread(target=self._wait, name="checkpoint-lock", daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        try:
            fcntl.fcntl(self._fd, self._wait_command, _flock(fcntl.F_WRLCK, SHM_CHECKPOINT_LOCK))
        except OSError as e:
            log.debug("checkpoint lock not awaited", error=str(e))
            self._answered.set()
            return
        with self._mutex:
            if not self._abandoned:
                self._got.set()
                self._answered.set()
            elif not self._closed:  # too late: the keeper moved on, and the till must be free
                self._unlock()
            # Once closed, the description goes with this call's hold on it, and its lock too.

    def taken(self, wait: float) -> bool:
        """Whether the lock requested last was granted within `wait` seconds."""
        if not self._answered.wait(wait) or not self._got.is_set():
            return False
        self._waiter = None
        return True

    def release(self) -> None:
        """Let go of the lock, or of the request if it is still waiting."""
        with self._mutex:
            if self._got.is_set():
                self._got.clear()
                self._unlock()
                self._waiter = None
            else:
                self._abandoned = True

    def _unlock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, self._set_command, _flock(fcntl.F_UNLCK, SHM_CHECKPOINT_LOCK))

    def close(self, wait: float = 0.0) -> None:
        """Let go, waiting up to `wait` seconds for an answer the kernel still owes (the till is
        checkpointing), and close the descriptor: only once this process has no connection left
        to the database."""
        self.release()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.join(wait)
            if waiter.is_alive():
                log.warning("the checkpoint lock is still held by another process", waited_seconds=wait)
        with self._mutex:
            self._closed = True
            os.close(self._fd)


def _open_if_present(path: str, flags: int) -> int | None:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:  # no -shm (another locking mode) or unreadable: copy without the guard
        log.debug("checkpoint guard unavailable", path=path, error=str(e))
        return None


def _checkpoint(conn: sqlite3.Connection) -> int | None:
    """Fold the WAL into the database as far as every reader allows; the WAL's length in frames.

    PASSIVE never blocks a writer; if the till is checkpointing already, this simply does less.
    """
    try:
        _busy, frames, _folded = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as e:  # a courtesy to the till, never a reason to fail the backup
        log.debug("checkpoint skipped", error=str(e))
        return None
    return int(frames)


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
