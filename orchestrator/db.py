"""Engines for Capsule's own database (the event log and its projections): SQLite or PostgreSQL.

SQLite is the default and needs no server; PostgreSQL serves the distributed mode. On SQLite every
transaction begun on the engine takes the write lock at once (BEGIN IMMEDIATE); code that only
reads, such as a projection's query, should use `for_reading(engine)` so that it never waits for a
writer. Driver errors met while using an engine become our errors through `database_errors`, with
the URL shown without its password. A damaged SQLite log and a full disk under it get errors of
their own, which name the file or the folder and what to do.
"""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from capsule.orchestrator.errors import (
    EventLogDamaged,
    EventLogDiskFull,
    EventStoreError,
    EventStoreUnavailable,
)

SQLITE_BUSY_TIMEOUT_SECONDS = 30
WAL_SWITCH_RETRY_SECONDS = 0.01
"""How often a connection tries again to switch a new log to WAL mode while another one does it."""
WAITED = "capsule_waited_seconds"
"""The attribute of a driver error that says how long the statement waited before it failed."""
STATEMENT_STARTED = "capsule_statement_started"
READ_ONLY_OPTION = "capsule_read_only"
URL_HINT = "check CAPSULE_EVENT_STORE_URL"
UNDEFINED_TABLE, SERIALIZATION_FAILURE, DEADLOCK_DETECTED = "42P01", "40001", "40P01"
# PostgreSQL's data_corrupted, index_corrupted and disk_full.
DATA_CORRUPTED, INDEX_CORRUPTED, DISK_FULL = "XX001", "XX002", "53100"
# SQLite's primary result codes (the low byte of an extended one).
SQLITE_PERM, SQLITE_BUSY, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT = 3, 5, 8, 10, 11
SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 13, 14, 26
# Text that no SQLite file in good order gives back: the driver meets it reading a damaged page.
UNDECODABLE_TEXT = "Could not decode to UTF-8"
# SQLite reports some writes that found no space (growing the -shm index) as a plain I/O error:
# with less than this left in the folder, the disk is taken to be full.
NEARLY_FULL_BYTES = 1024 * 1024
REPAIR_HINT = "`capsule repair-log` sets it aside (nothing is deleted) and starts a new one"


def default_event_store_url(home: Path) -> str:
    """The SQLite event log under Capsule's home folder, used when no URL is configured."""
    return f"sqlite:///{home / 'events.db'}"


def make_engine(url: str) -> Engine:
    """An engine for `url`: `sqlite:///<file>` or `postgresql+psycopg://...` (plain `postgresql://` too)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        # The text may hold a password, so it is not repeated.
        raise EventStoreError(
            "the event store URL is not a database URL such as sqlite:///data/capsule/events.db; " + URL_HINT
        ) from e
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return _sqlite_engine(parsed)
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg"):
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            # The event store's checks assume each statement sees what committed before it, whatever
            # default the server was given.
            isolation_level="READ COMMITTED",
            # Connections dropped by a server restart are replaced instead of failing the next command.
            pool_pre_ping=True,
        )
    raise EventStoreError(
        f"the event store URL {safe_url(parsed)} names a database Capsule cannot use; "
        f"use sqlite:///<file> or postgresql+psycopg://<user>@<host>/<database> ({URL_HINT})"
    )


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:" and not url.query.get("uri"):
        folder = Path(url.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full(folder, e.strerror or "no space left on device") from e
            raise EventStoreUnavailable(
                f"the folder {folder} for the event store cannot be created ({e.strerror}); "
                f"check CAPSULE_HOME or CAPSULE_EVENT_STORE_URL"
            ) from e
    # The driver's own timeout covers the statements SQLAlchemy runs on a new connection before
    # `_configure_sqlite_connection` sets the busy timeout: they wait as long as every later one.
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    event.listen(engine, "before_cursor_execute", _statement_starts)
    event.listen(engine, "handle_error", _note_wait)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: object) -> None:
    # The driver must not open transactions by itself: `_begin_sqlite_transaction` opens them, so that
    # a writer takes the write lock at BEGIN instead of failing with SQLITE_BUSY_SNAPSHOT when a
    # transaction that began by reading tries to write after another writer committed.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # The timeout first, so that the statements below wait for another connection's lock
        # (the switch to WAL, which SQLite does not let wait, tries again by itself).
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        mode = _switch_to_wal(cursor)
        # FULL syncs the WAL at every commit: an appended event survives a power cut.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()
    # An in-memory database reports "memory": there is no file to share, so nothing to protect.
    if str(mode).lower() not in ("wal", "memory"):
        raise EventStoreUnavailable(
            f"the event store's file system does not support SQLite's WAL mode (it stays in {mode} mode); "
            "keep the event store on a local disk"
        )


def _switch_to_wal(cursor: sqlite3.Cursor) -> str:
    """The journal mode after asking for WAL, waiting as the busy timeout would for another
    connection switching the same new log.

    The switch takes the write lock of a file still in rollback mode. A second connection that
    tries it meanwhile holds a read lock it cannot give up inside the statement, so SQLite answers
    it with SQLITE_BUSY at once, without the busy handler (waiting could deadlock): two processes
    starting together on a new log saw "database is locked" with nothing waited. Trying again
    after the first has finished finds the log in WAL mode, and the switch is then a no-op.
    """
    started = time.monotonic()
    while True:
        try:
            return str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as e:
            waited = time.monotonic() - started
            if _primary_code(e) != SQLITE_BUSY or waited >= SQLITE_BUSY_TIMEOUT_SECONDS:
                setattr(e, WAITED, waited)
                raise
        time.sleep(WAL_SWITCH_RETRY_SECONDS)


def _primary_code(error: BaseException | None) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _statement_starts(conn: Connection, *_statement: object) -> None:
    conn.info[STATEMENT_STARTED] = time.monotonic()


def _note_wait(context: ExceptionContext) -> None:
    # How long the failed statement ran: for a lock, how long SQLite waited for it (the busy
    # timeout, or nothing when SQLite gave up at once), which the error message then says.
    orig = context.original_exception
    if context.connection is None or context.statement is None or hasattr(orig, WAITED):
        return
    started = context.connection.info.get(STATEMENT_STARTED)
    if isinstance(started, float):
        setattr(orig, WAITED, time.monotonic() - started)


def _begin_sqlite_transaction(connection: Connection) -> None:
    # Readers begin deferred: in WAL mode they read a snapshot and never wait for a writer.
    # Everything else takes the write lock at once, which also serialises appends.
    read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def for_reading(engine: Engine) -> Engine:
    """The same engine (and pool) for transactions that only read: on SQLite they never block writers.

    A transaction begun through it must not write: on SQLite it would fail as soon as another
    writer committed first.
    """
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def safe_url(url: URL | str) -> str:
    """The URL as a person may see it in a message or a log: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(engine: Engine) -> Iterator[None]:
    """Turn driver errors raised inside the block into our errors, saying what to check."""
    try:
        yield
    except DBAPIError as e:
        raise describe_failure(e, engine.url) from e
    except json.JSONDecodeError as e:
        # Only SQLite keeps JSON as text that can go bad; PostgreSQL checks JSONB when it is written.
        path = sqlite_file(engine.url)
        if path is None:
            raise
        raise damaged(path, f"an event's data is not JSON: {e}") from e


def sqlite_file(url: URL | str) -> Path | None:
    """The file of a SQLite database URL; None for PostgreSQL, an in-memory or a URI database."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if parsed.query.get("uri") else Path(database)


def damaged(path: Path, reason: str) -> EventLogDamaged:
    """The error for a SQLite event log whose file or data is damaged."""
    return EventLogDamaged(f"the event log {path} is damaged ({reason}); {REPAIR_HINT}", reason=reason)


def disk_full(folder: Path, reason: str) -> EventLogDiskFull:
    """The error for an event log that cannot be written because the disk under `folder` is full."""
    return EventLogDiskFull(
        f"the disk that holds the event log ({folder}) is full ({reason}); free space there and try again"
    )


def describe_failure(error: DBAPIError, url: URL) -> EventStoreError:
    """Our error for a driver error met on the database at `url`, with a sentence to act on."""
    where = f"the event store at {safe_url(url)}"
    reason = driver_reason(error, url)
    sqlstate = getattr(error.orig, "sqlstate", None)
    special = _sqlite_failure(error, url, reason)
    if special is not None:
        return special
    if sqlstate in (DATA_CORRUPTED, INDEX_CORRUPTED):
        return EventLogDamaged(
            f"{where} reports damaged data ({reason}); repairing it is the database server's work "
            "(see its log, and restore it from its own backup if need be)"
        )
    if sqlstate == DISK_FULL:
        return EventLogDiskFull(f"{where} has no disk space left ({reason}); free space on its server")
    if sqlstate == UNDEFINED_TABLE or "no such table" in reason:
        return EventStoreError(
            f"{where} has no events table ({reason}); start Capsule once so that it creates its tables, "
            f"or {URL_HINT}"
        )
    if sqlstate in (SERIALIZATION_FAILURE, DEADLOCK_DETECTED):
        return EventStoreUnavailable(
            f"{where} gave up a transaction that collided with another one ({reason}); try again"
        )
    if url.get_backend_name() == "sqlite" and "locked" in reason:
        waited = getattr(error.orig, WAITED, None)
        how_long = "was locked by another writer"
        if waited is not None:
            how_long = f"stayed locked by another writer for {waited:.1f} s"
        return EventStoreUnavailable(
            f"{where} {how_long} ({reason}); try again, and look for a stuck Capsule process"
        )
    if isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated:
        return EventStoreUnavailable(
            f"{where} cannot be reached ({reason}); {URL_HINT} and that the database is running "
            "and accepts connections"
        )
    return EventStoreError(f"{where} refused a statement ({reason}); report this with the log")


def _sqlite_failure(error: DBAPIError, url: URL, reason: str) -> EventStoreError | None:
    """Our error for what SQLite says of the log's file: damaged, on a full disk, or out of reach."""
    path = sqlite_file(url)
    if path is None:
        return None
    primary = _primary_code(error.orig)
    if UNDECODABLE_TEXT in reason:
        # The driver goes on to quote the undecodable text: a fragment of an event, not for a message.
        return damaged(path, reason.partition(" with text ")[0])
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return damaged(path, reason)
    folder = path.parent
    if primary == SQLITE_FULL or (primary == SQLITE_IOERR and _free_bytes(folder) < NEARLY_FULL_BYTES):
        return disk_full(folder, reason)
    if primary in (SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN):
        # There is no server to reach: the file, its folder or the disk under them is the trouble.
        return EventStoreUnavailable(
            f"the event log {path} cannot be opened or written ({reason}); check that it is a file "
            f"this user may read and write, in a folder it may write to, or {URL_HINT}"
        )
    return None


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return NEARLY_FULL_BYTES  # unknown: not taken for a full disk


def driver_reason(error: DBAPIError, url: URL) -> str:
    """The first line of the driver's own message, with the URL's password masked if it appears."""
    lines = str(error.orig).strip().splitlines()
    reason = lines[0] if lines else type(error.orig).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return reason
