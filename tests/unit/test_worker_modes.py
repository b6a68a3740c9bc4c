"""Backups and restores give the same bytes with worker processes and on threads alone."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.adapters.errors import BlobNotFound, IntegrityError
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite.backup import backup_database
from capsule.adapters.workers import sealpool
from capsule.adapters.workers.sealpool import (
    SealPool,
    ThreadSealPool,
    WorkerFailed,
    database_pool,
    split_sealed,
)


def _database(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t(body) VALUES (?)", [(f"row {i} " * 20,) for i in range(rows)])
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("workers", "pools"),
    # With no worker there is no pool: one run of it is enough.
    [(0, "threads"), (1, "threads"), (1, "processes"), (2, "threads"), (2, "processes")],
)
def test_every_worker_mode_stores_and_restores_the_same_bytes(
    tmp_path: Path, workers: int, pools: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup with a parent takes threads where pages are hashed natively, worker processes
    elsewhere: both, whatever this machine has."""
    monkeypatch.setattr(sealpool, "native_page_ids", lambda: pools == "threads")
    db = tmp_path / "pos.db"
    _database(db, 3000)
    repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key", pack_size=64 * 1024)
    first = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=workers)
    again = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=workers)
    assert first.manifest.totals.new_blobs == first.manifest.totals.blobs > 64
    assert again.manifest.totals.new_blobs == 0
    assert first.manifest.entries[0].blob_lists == again.manifest.entries[0].blob_lists

    reopened = Repository.open(LocalBackend(tmp_path / "repo"), tmp_path / "key")
    out = tmp_path / f"out{workers}"
    restore_snapshot(reopened, again.manifest, out, workers=workers)
    restored = (out / "pos.db").read_bytes()
    # Built on the first's pages, the second has no SHA-256 (with workers); its pages' ids were
    # checked as they were restored, and its bytes are the first's.
    assert again.manifest.entries[0].sha256 == (first.manifest.entries[0].sha256 if workers == 0 else None)
    assert hashlib.sha256(restored).hexdigest() == first.manifest.entries[0].sha256


def test_a_damaged_blob_fails_the_restore_in_a_worker_with_an_integrity_error(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 500)
    repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key")
    result = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=1)
    pack = next((tmp_path / "repo" / "data").glob("*/*"))
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x01
    pack.write_bytes(bytes(data))
    reopened = Repository.open(LocalBackend(tmp_path / "repo"), tmp_path / "key")
    with pytest.raises(IntegrityError, match="failed authentication"):
        restore_snapshot(reopened, result.manifest, tmp_path / "out", workers=1)
    assert not any((tmp_path / "out").iterdir())


def test_a_worker_that_dies_fails_its_requests_instead_of_hanging(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 4096 * 64)
    with SealPool(repo.master_key, 1, workers=1) as pool:
        pool._procs[0].proc.kill()
        pool._procs[0].proc.wait()
        with pytest.raises(WorkerFailed):
            pool.hash(str(big), 0, 4096 * 64, 4096).result(timeout=10)


def test_a_database_backup_with_a_parent_takes_threads_where_pages_are_hashed_natively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key")
    for native, parent, kind in (
        (True, True, ThreadSealPool),
        (True, False, SealPool),  # a first backup seals every page: processes keep that memory apart
        (False, True, SealPool),
        (False, False, SealPool),
    ):
        monkeypatch.setattr(sealpool, "native_page_ids", lambda native=native: native)
        with database_pool(repo.master_key, 1, workers=1, parent=parent) as pool:
            assert type(pool) is kind


def test_threads_and_processes_answer_every_request_alike(tmp_path: Path) -> None:
    """The same ids, sealed pieces of the same sizes, the same errors."""
    repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key")
    data = bytes(range(256)) * 16 * 40 + b"tail" * 100  # 40 pages of 4 KiB, then a short piece
    source = tmp_path / "pages"
    source.write_bytes(data)
    ids = repo.sealer.blob_ids(data, 4096)
    answers = []
    for kind in (ThreadSealPool, SealPool):
        with kind(repo.master_key, 3, workers=2) as pool:
            hashed = bytes(pool.hash(str(source), 0, len(data), 4096).result(timeout=30))
            wanted = [0, 3, 40]
            picked = b"".join(ids[32 * i : 32 * i + 32] for i in wanted)
            reply = pool.seal_pieces(
                str(source), 0, True, (0, len(data), 4096), indices=wanted, ids=picked
            ).result(timeout=30)
            header, sealed = split_sealed(reply)
            with pytest.raises(BlobNotFound, match="missing"):
                pool.hash(str(tmp_path / "gone"), 0, 4096, 4096).result(timeout=30)
            with pytest.raises(WorkerFailed, match="shorter than expected"):
                pool.hash(str(source), 0, len(data) + 4096, 4096).result(timeout=30)
        answers.append((hashed, len(header), len(sealed)))
    assert answers[0][0] == answers[1][0] == ids
    assert answers[0][1:] == answers[1][1:]
    assert answers[0][1] > 0 and answers[0][2] > 0
