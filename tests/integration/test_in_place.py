"""A WAL database read where it lies: every change reaches the snapshot, whichever way it was made.

The checkpoint keeper folds the WAL into the database file and then freezes it, and the backup
reads that file in place (`adapters/sqlite/inplace.py`) instead of a copy. These tests change the
database in each way that moves its pages (one byte left in the WAL, one byte folded into the file,
the WAL restarted, VACUUM, the file shrinking and growing) and hold every snapshot to the file
itself: restored, it is the database file byte for byte once its WAL is folded in, and SQLite finds
it sound. Where the file cannot be frozen at the WAL's end, the backup copies it as before.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite import backup as database_backup
from capsule.adapters.sqlite.backup import BackupResult, backup_database
from capsule.adapters.sqlite.inplace import read_header, still_frozen
from tests.unit.support import new_repository, reopen

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The databases the backups took a copy of (none, when each was read in place)."""
    made: list[Path] = []
    real = database_backup.copy_database

    def copy_database(source: Path, target: Path, *args: Any, **kw: Any) -> Any:
        made.append(source)
        return real(source, target, *args, **kw)

    real_live = database_backup.LiveCopy

    class LiveCopy(real_live):  # type: ignore[misc, valid-type]
        def __init__(self, source: Path, target: Path, keeper: Any = None) -> None:
            made.append(source)
            super().__init__(source, target, keeper)

    monkeypatch.setattr(database_backup, "copy_database", copy_database)
    monkeypatch.setattr(database_backup, "LiveCopy", LiveCopy)
    return made


@pytest.fixture
def till(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A WAL database of 3,000 rows (about 1 MiB) and the shop's connection to it, which never
    checkpoints on its own: what it commits stays in the WAL until a test folds it in."""
    conn = sqlite3.connect(tmp_path / "pos.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    _insert(conn, range(3000))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    yield conn
    conn.close()


def _insert(conn: sqlite3.Connection, ids: range) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(id, v) VALUES (?, ?)", [(i, f"row {i:06d} " + "x" * 300) for i in ids])
    conn.execute("COMMIT")


def _one_byte(conn: sqlite3.Connection, row: int, char: str) -> None:
    conn.execute("UPDATE t SET v = ? WHERE id = ?", (f"row {row:06d} " + char + "x" * 299, row))


def _folded(db: Path) -> bytes:
    """The database file with everything committed folded in."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    return db.read_bytes()


def _restored(repo: Repository, key_file: Path, result: BackupResult, out: Path) -> bytes:
    (restored,) = restore_snapshot(reopen(repo, key_file), result.manifest, out)
    conn = sqlite3.connect(f"file:{restored.path}?immutable=1", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    data = restored.path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == restored.sha256
    # A snapshot built on its parent's pages has no SHA-256 in its entry: its page ids were checked.
    assert result.manifest.entries[0].sha256 in (None, restored.sha256)
    return data


def _vacuum_shrinking(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM t WHERE id % 3 = 0")
    conn.execute("VACUUM")


CHANGES: list[tuple[str, Callable[[sqlite3.Connection], object]]] = [
    ("one byte left in the WAL", lambda c: _one_byte(c, 1234, "y")),
    (
        "one byte folded into the file",
        lambda c: (_one_byte(c, 2345, "z"), c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()),
    ),
    (
        "one byte in a WAL started over",
        lambda c: (c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone(), _one_byte(c, 10, "w")),
    ),
    ("VACUUM, the file shrinking by a third", _vacuum_shrinking),
    ("the file growing", lambda c: _insert(c, range(5000, 8000))),
]


def test_every_change_reaches_a_snapshot_read_in_place(
    tmp_path: Path, till: sqlite3.Connection, copies: list[Path]
) -> None:
    repo, key_file = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    first = backup_database(repo, db, tmp_path / "staging", now=T0)
    assert _restored(repo, key_file, first, tmp_path / "out-0") == _folded(db)
    sizes = [first.manifest.entries[0].size]
    for n, (what, change) in enumerate(CHANGES, start=1):
        before = _folded(db)
        change(till)
        result = backup_database(repo, db, tmp_path / "staging", now=T0 + timedelta(hours=n))
        after = _folded(db)
        assert after != before, what
        assert _restored(repo, key_file, result, tmp_path / f"out-{n}") == after, what
        assert result.manifest.totals.new_blobs >= 1, what
        sizes.append(result.manifest.entries[0].size)
    assert copies == []  # every one of them was read in place
    assert sizes[4] < sizes[3] < sizes[5]  # VACUUM shrank the file, the rows then grew it


def test_a_wal_that_cannot_be_folded_to_its_end_is_copied(
    tmp_path: Path, till: sqlite3.Connection, copies: list[Path]
) -> None:
    # A reader of the shop's holds the WAL where it began: no fold may pass it, so the file keeps
    # an older state than the till's latest commit, and only a copy holds that commit.
    repo, key_file = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    _one_byte(till, 100, "a")
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (3000,)
    _one_byte(till, 200, "b")
    try:
        result = backup_database(repo, db, tmp_path / "staging", now=T0)
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert copies == [db]
    restored = tmp_path / "out"
    (file,) = restore_snapshot(reopen(repo, key_file), result.manifest, restored)
    conn = sqlite3.connect(f"file:{file.path}?immutable=1", uri=True)
    try:
        changed = conn.execute("SELECT substr(v, 12, 1) FROM t WHERE id IN (100, 200) ORDER BY id")
        assert changed.fetchall() == [("a",), ("b",)]
    finally:
        conn.close()


def test_a_header_written_meanwhile_is_noticed(tmp_path: Path, till: sqlite3.Connection) -> None:
    db = tmp_path / "pos.db"
    header = read_header(db)
    assert header is not None and still_frozen(db, header)
    till.execute("CREATE TABLE more(x)")  # the schema cookie, in the header, moves
    till.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert not still_frozen(db, header)


def test_a_file_not_in_wal_mode_or_with_an_untrusted_page_count_is_not_read_in_place(
    tmp_path: Path, till: sqlite3.Connection
) -> None:
    db = tmp_path / "pos.db"
    header = read_header(db)
    assert header is not None and header.page_count * header.page_size == db.stat().st_size
    raw = bytearray(db.read_bytes()[:100])
    stale = bytearray(raw)
    stale[92:96] = (int.from_bytes(raw[24:28], "big") + 1).to_bytes(4, "big")  # count not valid for it
    rollback = bytearray(raw)
    rollback[18:20] = b"\x01\x01"
    for name, bad in (("stale", stale), ("rollback", rollback)):
        copy = tmp_path / f"{name}.db"
        copy.write_bytes(bytes(bad) + db.read_bytes()[100:])
        assert read_header(copy) is None, name
