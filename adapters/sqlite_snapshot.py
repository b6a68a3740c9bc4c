"""Consistent copies of a live SQLite database, taken through SQLite's backup API.

Never a file copy: committed rows may still sit in the WAL. The copy is made in one backup step so
that SQLite does not restart it each time the shop commits a sale (a stepped backup of a busy database
never finishes). In WAL mode writers keep committing during the copy; in rollback-journal mode they
wait until it is done, because the copy holds a shared lock for its duration.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from adapters.errors import DiskFull, SourceError

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 30_000
SIDE_FILES = ("-wal", "-shm", "-journal")


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


def copy_database(source: Path, target: Path) -> DatabaseCopy:
    """Copy `source` consistently into `target` (which must not exist) and describe the copy."""
    src = _connect_existing(source)
    try:
        journal_mode = str(src.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        target.parent.mkdir(parents=True, exist_ok=True)
        dst = sqlite3.connect(target, isolation_level=None)
        # The copy is read once and deleted: it needs neither a journal nor an fsync, and syncing
        # a gigabyte would compete with the till's own commits for the disk.
        dst.execute("PRAGMA journal_mode=OFF").fetchone()
        dst.execute("PRAGMA synchronous=OFF")
        started = time.perf_counter()
        try:
            src.backup(dst, pages=-1)
            page_size = int(dst.execute("PRAGMA page_size").fetchone()[0])
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
        seconds = time.perf_counter() - started
        if journal_mode == "wal":
            _checkpoint(src)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {target.parent} is full") from e
        raise
    finally:
        src.close()
    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{target}{suffix}")
    size = target.stat().st_size
    log.debug("database copied", source=str(source), bytes=size, seconds=round(seconds, 3))
    return DatabaseCopy(target, size, page_size, page_count, journal_mode, seconds)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Fold into the database the WAL that grew while the copy held its read transaction.

    Otherwise the till's next commit runs that checkpoint itself and waits for it. PASSIVE never
    blocks a writer; if the till is checkpointing already, this simply does less.
    """
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as e:  # a courtesy to the till, never a reason to fail the backup
        log.debug("checkpoint after the copy skipped", error=str(e))


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
