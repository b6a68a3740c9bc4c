"""Storing a database copy while SQLite still writes it gives exactly what storing it afterwards gives.

The store follows the copy block by block (`adapters/sqlite/livecopy.py`), which relies on how SQLite's
backup API writes a new file and on the file system reporting holes. These tests hold it to the plain way:
same blobs, same list blobs, same SHA-256, and a restore equal to the source byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.errors import SourceError
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite import backup as database_backup
from capsule.adapters.sqlite import livecopy
from capsule.adapters.sqlite.backup import backup_database
from tests.unit.support import new_repository, reopen

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SHM = Path("/dev/shm")  # where Capsule puts copies that fit in memory


@pytest.fixture(autouse=True)
def _always_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    # A WAL database is read in place when it can be (tests/integration/test_in_place.py); these
    # tests hold the copy, which every other database and every failed freeze still takes.
    monkeypatch.setattr(database_backup, "READ_IN_PLACE", False)


def test_this_machine_stores_database_copies_while_they_are_written() -> None:
    # The tests below check the store that follows the copy; it needs memory that reports holes.
    assert SHM.is_dir() and livecopy.reports_holes(SHM)


def _database(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    conn.execute("CREATE INDEX items_name ON items(name)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO items(name, data) VALUES (?, ?)",
        # Repeated rows give equal pages too, which are stored once across the copy's blocks.
        [
            (f"item {i % 5000}", rng.randbytes(rng.randint(50, 900)) if i % 7 else b"z" * 800)
            for i in range(rows)
        ],
    )
    conn.execute("COMMIT")
    conn.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain_file(source: Path, tmp_path: Path) -> Path:
    """The database as one file, as the backup API writes it, to compare restores with."""
    out = tmp_path / "expected.db"
    src = sqlite3.connect(source)
    dst = sqlite3.connect(out)
    src.backup(dst)
    src.close()
    dst.close()
    return out


@pytest.mark.parametrize(
    ("rows", "late"),
    [(30_000, False), (30_000, True), (200, True)],  # about 10 MiB in many blocks, and one block
)
def test_storing_while_copying_gives_what_storing_afterwards_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, late: bool
) -> None:
    repo, key_file = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    _database(db, rows, seed=rows)
    if late:
        # SQLite starts writing only after the store has begun asking for blocks.
        real = livecopy.copy_database

        def starts_late(source: Path, target: Path, started: Any = None, **kw: Any) -> Any:
            def then_pause(expected: livecopy.DatabaseCopy) -> None:
                started(expected)
                time.sleep(0.3)

            return real(source, target, started=then_pause, **kw)

        monkeypatch.setattr(livecopy, "copy_database", starts_late)
    streamed = backup_database(repo, db, tmp_path / "staging", now=T0)
    monkeypatch.undo()
    monkeypatch.setattr(database_backup, "READ_IN_PLACE", False)

    monkeypatch.setattr(database_backup, "reports_holes", lambda _directory: False)
    plain = backup_database(repo, db, tmp_path / "staging", now=T0 + timedelta(minutes=1))

    a, b = streamed.manifest.entries[0], plain.manifest.entries[0]
    assert (a.blobs, a.blob_lists, a.size) == (b.blobs, b.blob_lists, b.size)
    assert b.sha256 is None, "built on the streamed snapshot's pages: its ids stand for the digest"
    assert plain.manifest.totals.new_blobs == 0
    if rows > 1000:
        assert a.size > 8 * 1024 * 1024 and a.blob_lists, "the database is meant to span many blocks"
    (restored,) = restore_snapshot(reopen(repo, key_file), streamed.manifest, tmp_path / "out")
    assert _sha256(restored.path) == _sha256(_plain_file(db, tmp_path)) == a.sha256


def test_a_copy_that_fails_halfway_fails_the_backup_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _ = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    _database(db, 20_000, seed=1)
    real = livecopy.copy_database

    def breaks_after_starting(source: Path, target: Path, started: object = None, **kw: Any) -> object:
        def half_then_fail(expected: livecopy.DatabaseCopy) -> None:
            assert callable(started)
            started(expected)
            with open(target, "r+b") as f:  # some pages land, then the copy dies
                f.truncate(expected.size // 2)
                os.pwrite(f.fileno(), b"\x01" * 4096, 4096)
            raise SourceError("the disk went away")

        return real(source, target, started=half_then_fail, **kw)

    monkeypatch.setattr(livecopy, "copy_database", breaks_after_starting)
    with pytest.raises(SourceError, match="the disk went away"):
        backup_database(repo, db, tmp_path / "staging", now=T0)
    assert list(repo.snapshots()) == []
    leftovers = [p for p in (SHM / f"capsule-{os.getuid()}").glob(f"pos.db.{os.getpid()}-*")]
    assert leftovers == []


def test_a_database_without_tables_backs_up_and_restores(tmp_path: Path) -> None:
    repo, key_file = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 1")  # SQLite writes its header: one page, no table
    conn.close()
    result = backup_database(repo, db, tmp_path / "staging", now=T0)
    (restored,) = restore_snapshot(reopen(repo, key_file), result.manifest, tmp_path / "out")
    conn = sqlite3.connect(f"file:{restored.path}?immutable=1", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert result.manifest.entries[0].size == restored.path.stat().st_size > 0


def test_a_zero_byte_file_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    # SQLite would open it as a new database: a snapshot of nothing that would become the latest.
    repo, _ = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    db.write_bytes(b"")

    with pytest.raises(SourceError, match="is empty"):
        backup_database(repo, db, tmp_path / "staging", now=T0)

    assert list(repo.backend.list("snapshots")) == [] and list(repo.backend.list("data")) == []
    assert db.stat().st_size == 0


@pytest.mark.parametrize(("mode", "followed"), [("wal", True), ("delete", False)])
def test_only_a_wal_database_is_stored_while_it_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, followed: bool
) -> None:
    # In rollback-journal mode the copy keeps the till from committing, so it runs alone.
    repo, key_file = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    _database(db, 3000, seed=3)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={mode}").fetchone()
    conn.close()
    made: list[Path] = []
    real = database_backup.LiveCopy

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, source: Path, target: Path, keeper: Any = None) -> None:
            made.append(source)
            super().__init__(source, target, keeper)

    monkeypatch.setattr(database_backup, "LiveCopy", Spy)
    result = backup_database(repo, db, tmp_path / "staging", now=T0)
    assert made == ([db] if followed else [])
    assert result.manifest.entries[0].sqlite is not None
    assert result.manifest.entries[0].sqlite.journal_mode == mode
    (restored,) = restore_snapshot(reopen(repo, key_file), result.manifest, tmp_path / "out")
    assert _sha256(restored.path) == restored.sha256 == result.manifest.entries[0].sha256


def test_a_folder_is_asked_once_whether_it_reports_holes(tmp_path: Path) -> None:
    first = livecopy.reports_holes(tmp_path)
    assert livecopy.reports_holes(tmp_path) is first
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
