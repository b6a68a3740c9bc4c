"""A database backup builds on its parent snapshot: a page whose id is the parent's at the same place
is not looked up on its own, yet a parent that lost blobs never makes a snapshot that cannot restore."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capsule.adapters.repository.rebuild import rebuild_index
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite import pagestore
from capsule.adapters.sqlite.backup import BackupResult, backup_database
from tests.unit.support import count_index_lookups, new_repository, reopen, wal_database_of_random_rows

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)
PAGE = 4096
# Sealing in one worker process, as a real backup does in several (see test_worker_modes.py).
WORKERS = 1


def _backup(repo: Repository, db: Path, staging: Path, hour: int) -> BackupResult:
    return backup_database(repo, db, staging, now=T0 + timedelta(hours=hour), workers=WORKERS)


def _pages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[i : i + PAGE] for i in range(0, len(data), PAGE)]


def _restores_to(repo: Repository, result: BackupResult, db: Path, out: Path) -> None:
    (done,) = restore_snapshot(repo, result.manifest, out, workers=WORKERS)
    restored = hashlib.sha256((out / db.name).read_bytes()).hexdigest()
    assert restored == done.sha256 == hashlib.sha256(db.read_bytes()).hexdigest()
    assert result.manifest.entries[0].sha256 in (None, restored)


def _database(tmp_path: Path) -> Path:
    db = tmp_path / "pos.db"
    wal_database_of_random_rows(db, 6000)  # about 1,500 pages: six list blobs of 256 ids
    assert len(_pages(db)) > 5 * 256
    return db


def test_a_backup_with_nothing_changed_looks_up_no_page_on_its_own(tmp_path: Path) -> None:
    db = _database(tmp_path)
    repo, key_file = new_repository(tmp_path)
    first = _backup(repo, db, tmp_path / "staging", 0)
    pages = first.manifest.totals.blobs
    lists = len(first.manifest.entries[0].blob_lists)

    again_repo = reopen(repo, key_file)  # the next hour's process: the index read from disk
    asked = count_index_lookups(again_repo)
    again = _backup(again_repo, db, tmp_path / "staging", 1)

    assert again.manifest.totals.new_blobs == 0
    assert again.manifest.totals.changed_chunks == 0
    assert again.manifest.entries[0].blob_lists == first.manifest.entries[0].blob_lists
    # The parent's lists found (one search) and its pages checked as still stored (one search):
    # not a search for each block of pages and another for each list blob, as before.
    assert len(asked) <= 2, asked
    assert sum(asked) <= pages + lists, asked


def test_the_file_is_hashed_with_sha256_only_without_a_parent_to_build_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _database(tmp_path)
    repo, key_file = new_repository(tmp_path)
    hashed: list[int | None] = []
    sha256_file = pagestore.sha256_file

    def counting(path: Path, size: int | None = None) -> str:
        hashed.append(size)
        return sha256_file(path, size)

    monkeypatch.setattr(pagestore, "sha256_file", counting)
    first = _backup(repo, db, tmp_path / "staging", 0)
    assert len(hashed) == 1
    assert first.manifest.entries[0].sha256 == hashlib.sha256(db.read_bytes()).hexdigest()

    same = _backup(reopen(repo, key_file), db, tmp_path / "staging", 1)
    assert len(hashed) == 1  # built on the parent: its page ids stand for the digest
    assert same.manifest.entries[0].sha256 is None
    _restores_to(reopen(repo, key_file), same, db, tmp_path / "same")

    conn = sqlite3.connect(db)
    conn.execute("UPDATE t SET body = randomblob(900) WHERE id = 5000")  # a page near the end
    conn.commit()
    conn.close()
    changed = _backup(reopen(repo, key_file), db, tmp_path / "staging", 2)
    assert len(hashed) == 1
    assert changed.manifest.totals.changed_chunks == 1
    assert changed.manifest.entries[0].sha256 is None
    _restores_to(reopen(repo, key_file), changed, db, tmp_path / "changed")

    full = backup_database(
        reopen(repo, key_file),
        db,
        tmp_path / "staging",
        now=T0 + timedelta(hours=3),
        workers=WORKERS,
        full=True,
    )
    assert len(hashed) == 2  # a full backup reads every page anyway, and records the digest
    assert full.manifest.entries[0].sha256 == hashlib.sha256(db.read_bytes()).hexdigest()


def test_a_backup_after_some_sales_counts_and_stores_the_changed_pages(tmp_path: Path) -> None:
    db = _database(tmp_path)
    repo, key_file = new_repository(tmp_path)
    _backup(repo, db, tmp_path / "staging", 0)
    before = _pages(db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE t SET body = randomblob(900) WHERE id % 150 = 0")
    conn.executemany("INSERT INTO t (body) VALUES (randomblob(900))", [()] * 30)
    conn.commit()
    conn.close()
    after = _pages(db)
    differing = len(after) - sum(1 for a, b in zip(before, after, strict=False) if a == b)
    assert 0 < differing < len(after) // 20

    again_repo = reopen(repo, key_file)
    asked = count_index_lookups(again_repo)
    again = _backup(again_repo, db, tmp_path / "staging", 1)

    assert again.manifest.totals.changed_chunks == differing
    assert 0 < again.manifest.totals.new_blobs <= differing
    # Far fewer ids than two searches for every page, however the blocks were batched.
    assert sum(asked) < len(before) + 2 * differing + 2 * 256, asked
    _restores_to(reopen(repo, key_file), again, db, tmp_path / "restored")


def test_a_backup_whose_parent_lost_a_pack_stores_its_pages_again(tmp_path: Path) -> None:
    db = _database(tmp_path)
    repo, key_file = new_repository(tmp_path, pack_size=256 * 1024)
    _backup(repo, db, tmp_path / "staging", 0)
    packs = sorted((tmp_path / "repo" / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    assert len(packs) >= 3
    packs[-1].unlink()  # the largest: data pages of the parent

    again_repo = reopen(repo, key_file)
    again = _backup(again_repo, db, tmp_path / "staging", 1)

    assert again_repo.index.gone_packs == 1
    assert again.manifest.totals.new_blobs > 0
    _restores_to(reopen(repo, key_file), again, db, tmp_path / "restored")


def test_a_backup_after_the_index_was_rebuilt_without_a_lost_pack_stores_its_pages_again(
    tmp_path: Path,
) -> None:
    """No pack is missing that the index names: the parent simply names blobs no index holds."""
    db = _database(tmp_path)
    repo, key_file = new_repository(tmp_path, pack_size=256 * 1024)
    _backup(repo, db, tmp_path / "staging", 0)
    packs = sorted((tmp_path / "repo" / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    assert len(packs) >= 3
    packs[-1].unlink()
    rebuild_index(reopen(repo, key_file))

    again_repo = reopen(repo, key_file)
    again = _backup(again_repo, db, tmp_path / "staging", 1)

    assert again_repo.index.gone_packs == 0
    assert again.manifest.totals.new_blobs > 0
    _restores_to(reopen(repo, key_file), again, db, tmp_path / "restored")
