"""A whole repository on the memory backend: the engine needs the storage contract and no path.

Init, a database backup and a files backup, restore of both, verify reading every pack, index
rebuild, reopening with the key, and the locks all run against MemoryBackend, which has no
`LocalPaths`: restores that would hand packs to worker processes by path read ranges through the
contract instead. Nothing of the repository reaches the disk.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.adapters.errors import RepositoryReadOnly
from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.restore import POOL_MIN_BYTES, restore_files
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.adapters.repository.lock import RepositoryLock, locked
from capsule.adapters.repository.rebuild import rebuild_index
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.repository.verify import verify
from capsule.adapters.sqlite.backup import backup_database

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def make_database(path: Path, rows: int = 3000) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE sales (id INTEGER PRIMARY KEY, note TEXT, body BLOB)")
    conn.executemany(
        "INSERT INTO sales (note, body) VALUES (?, randomblob(900))", [(f"sale {i}",) for i in range(rows)]
    )
    conn.commit()
    conn.close()


def make_images(root: Path) -> dict[str, str]:
    """A folder big enough that a restore would use the worker processes; {path: sha256}."""
    (root / "shoes").mkdir(parents=True)
    files = {f"shoes/{i}.jpg": os.urandom(700_000 + i) for i in range(POOL_MIN_BYTES // 700_000 + 4)}
    files["empty.txt"] = b""
    files["note.txt"] = b"the shop's note\n"
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def tree_of(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def rows(path: Path) -> list[tuple[int, str, bytes]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, note, body FROM sales ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_repository_lives_whole_in_memory_from_init_to_verify(tmp_path: Path) -> None:
    backend = MemoryBackend("shop")
    key_file = tmp_path / "home" / "repository.key"
    repo = Repository.init(backend, key_file, passphrase="correct horse", pack_size=4 * 1024 * 1024)
    shop = tmp_path / "shop"
    shop.mkdir()
    make_database(shop / "pos.db")
    images = make_images(shop / "images")
    staging = tmp_path / "staging"
    staging.mkdir()

    with locked(repo.backend, "backup") as lock:
        assert lock.held and len(list(backend.list("locks"))) == 1
        db = backup_database(repo, shop / "pos.db", staging, now=NOW)
        files = backup_files(repo, shop / "images", now=NOW)
    assert list(backend.list("locks")) == []
    assert len(list(backend.list("data"))) >= 2
    assert set(backend.list("snapshots")) == {db.snapshot_id, files.snapshot_id}

    # Opened again, by the key file and by the passphrase, as another command would.
    for again in (Repository.open(backend, key_file), Repository.open(backend, None, "correct horse")):
        assert {name for name, _ in again.snapshots()} == {db.snapshot_id, files.snapshot_id}

    reader = Repository.open(backend, key_file)
    with locked(reader.backend, "restore", reading=True):
        restored = restore_snapshot(reader, reader.load_snapshot(db.snapshot_id), tmp_path / "db-to")
        restore_files(reader, reader.load_snapshot(files.snapshot_id), tmp_path / "images-to")
    (done,) = restored
    assert rows(done.path) == rows(shop / "pos.db")
    assert tree_of(tmp_path / "images-to") == images

    report = verify(Repository.open(backend, key_file), read_data=True)
    assert report.ok, report.problems
    assert report.snapshots == 2 and report.packs == len(list(backend.list("data")))

    with locked(reader.backend, "rebuild-index", exclusive=True):
        packs, blobs, unreadable = rebuild_index(Repository.open(backend, key_file))
    assert (packs, unreadable) == (len(list(backend.list("data"))), []) and blobs > 0
    again = Repository.open(backend, key_file)
    restore_files(again, again.load_snapshot(files.snapshot_id), tmp_path / "images-again")
    assert tree_of(tmp_path / "images-again") == images

    # Of the repository, only the key file (which lives outside it by design) is on disk.
    on_disk = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk <= {"home", "shop", "staging", "db-to", "images-to", "images-again"}
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["repository.key"]


def test_a_read_only_store_is_read_without_a_lock_and_refuses_a_backup(tmp_path: Path) -> None:
    backend = MemoryBackend("snapshot-copy")
    key_file = tmp_path / "repository.key"
    repo = Repository.init(backend, key_file)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8" + os.urandom(5000))
    result = backup_files(repo, tmp_path / "images", now=NOW)
    backend.read_only = True

    reader = Repository.open(backend, key_file)
    with locked(reader.backend, "restore", reading=True) as lock:
        assert not lock.held
        restore_files(reader, reader.load_snapshot(result.snapshot_id), tmp_path / "to")
    assert tree_of(tmp_path / "to") == tree_of(tmp_path / "images")
    lock = RepositoryLock(reader.backend, False, "backup")
    with pytest.raises(RepositoryReadOnly, match=r"the repository at memory:snapshot-copy .* backup writes"):
        lock.acquire()
