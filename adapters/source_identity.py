"""What a source is, as a snapshot records it: this machine's name, the resolved path and, for a
database, what SQLite itself says (application id, page size, a hash of the schema)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from capsule.adapters.logs import get_logger
from capsule.domain.manifest import SourceIdentity, schema_digest

if TYPE_CHECKING:
    import sqlite3

log = get_logger(__name__)


def this_host() -> str:
    return socket.gethostname()


def folder_identity(folder: Path | str) -> SourceIdentity:
    return SourceIdentity(host=this_host(), path=str(Path(folder).resolve()))


def database_identity(conn: sqlite3.Connection, source: Path) -> SourceIdentity:
    """The identity of the database `conn` is open on, read inside the caller's transaction so that
    it describes the same moment as the copy taken in it."""
    application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    schema = [str(r[0]) for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")]
    return SourceIdentity(
        host=this_host(),
        path=str(source.resolve()),
        application_id=application_id,
        page_size=page_size,
        schema_sha256=schema_digest(schema),
    )


def live_database_identity(path: Path) -> SourceIdentity:
    """The identity of the database at `path` now, read without writing to it.

    A file that is missing or that SQLite cannot read has only its host and path: whoever goes on
    to use it reports that in its own words.
    """
    import sqlite3  # noqa: PLC0415 - `cat` and a files restore name sources without opening a database

    resolved = path.resolve()
    if not resolved.is_file():
        return SourceIdentity(host=this_host(), path=str(resolved))
    try:
        conn = sqlite3.connect(f"{resolved.as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as e:
        log.debug("could not open the database to identify it", path=str(resolved), error=str(e))
        return SourceIdentity(host=this_host(), path=str(resolved))
    try:
        with contextlib.closing(conn):
            conn.execute("BEGIN")
            return database_identity(conn, resolved)
    except sqlite3.Error as e:
        log.debug("could not identify the database", path=str(resolved), error=str(e))
        return SourceIdentity(host=this_host(), path=str(resolved))
