"""A WAL database read where it lies, as its own snapshot, instead of through a copy.

SQLite writes a WAL database's file only when it checkpoints. The checkpoint keeper folds the WAL
into the file up to its end and then folds nothing more (`CheckpointKeeper.frozen`); every other
checkpoint needs the lock it keeps. Until it thaws, the file therefore holds every commit up to
that moment and nothing after: a consistent snapshot that the workers can read directly. That
saves the copy, in which SQLite reads every page and writes it again, at a cost in processor time
above that of hashing the pages (see docs/performance.md, "A WAL database read in place"), and
as much memory as the database while it lasts.

The file is trusted only as far as SQLite itself would trust it: its header must say WAL, its
in-header page count must be valid (SQLite keeps it so since 3.7.0) and fit in the file, and the
schema cookie and application id a reader sees must be those of the file's header. Anything else,
and the backup takes the copy as before.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from capsule.adapters.source_identity import database_identity
from capsule.adapters.sqlite.snapshot import SQLITE_HEADER, DatabaseCopy

log = structlog.get_logger(__name__)

HEADER_BYTES = 100  # SQLite's "Database File Format", section 1.3


@dataclass(frozen=True)
class FileHeader:
    """What a database file's first 100 bytes say about it."""

    raw: bytes
    page_size: int
    page_count: int
    schema_cookie: int
    application_id: int


def read_header(path: Path) -> FileHeader | None:
    """The header of the WAL database file at `path`, or None unless it can be read in place."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        log.debug("database header unreadable", error=str(e))
        return None
    if len(raw) < HEADER_BYTES or not raw.startswith(SQLITE_HEADER):
        return None
    (page_size,) = struct.unpack_from(">H", raw, 16)
    page_size = 65536 if page_size == 1 else page_size
    write_version, read_version = raw[18], raw[19]
    (counter, page_count, cookie) = struct.unpack_from(">I I 8x I", raw, 24)
    (application_id,) = struct.unpack_from(">i", raw, 68)
    (valid_for,) = struct.unpack_from(">I", raw, 92)
    if (write_version, read_version) != (2, 2) or page_size < 512 or page_size & (page_size - 1):
        return None  # not in WAL mode: the till writes this file directly
    if valid_for != counter or page_count == 0 or page_count * page_size > size:
        return None  # SQLite would take the count from the file's size: so does the copy
    return FileHeader(raw, page_size, page_count, cookie, application_id)


def frozen_image(source: Path, folded_at: float) -> tuple[DatabaseCopy, FileHeader] | None:
    """The database file at `source`, frozen by the keeper, described as the snapshot it is; None
    if it cannot be read in place. `folded_at` is when the keeper froze it (perf_counter)."""
    header = read_header(source)
    if header is None:
        return None
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        log.debug("database not opened to identify it", error=str(e))
        return None
    try:
        with contextlib.closing(conn):
            conn.execute("BEGIN")
            cookie = int(conn.execute("PRAGMA schema_version").fetchone()[0])
            if cookie != header.schema_cookie:
                log.debug("the schema changed since the fold; reading a copy instead")
                return None
            identity = database_identity(conn, source)
    except sqlite3.Error as e:
        log.debug("database not identified", error=str(e))
        return None
    if (identity.page_size, identity.application_id) != (header.page_size, header.application_id):
        return None  # set since the fold, without a schema change
    size = header.page_size * header.page_count
    seconds = time.perf_counter() - folded_at
    image = DatabaseCopy(source, size, header.page_size, header.page_count, "wal", seconds, identity)
    return image, header


def still_frozen(source: Path, header: FileHeader) -> bool:
    """Whether the file's header is still the one read when it was frozen: a cheap second look
    beside the keeper's lock, which alone keeps the file from being written."""
    again = read_header(source)
    return again is not None and again.raw == header.raw
