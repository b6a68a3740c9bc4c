"""Loading the index of a large repository: memory stays bounded, and nothing is lost or counted twice."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from capsule.adapters.repository import index as index_module
from capsule.adapters.repository import repo as repo_module
from capsule.adapters.repository.index import decode_index, encode_index
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite.backup import backup_database
from tests.unit.support import count_index_reads, new_repository, reopen, wal_database_of_random_rows


@pytest.mark.parametrize("hold", [0, 10**9], ids=["read-twice", "held"])
def test_index_files_load_in_runs_skip_what_is_superseded_and_restore(tmp_path, monkeypatch, hold):
    monkeypatch.setattr(repo_module, "INDEX_FLUSH_BLOBS", 40)  # many index files
    monkeypatch.setattr(index_module, "LOAD_AT", 16)  # a run for each index file as it loads
    monkeypatch.setattr(index_module, "SPARSE", 4)
    monkeypatch.setattr(index_module, "FILE_SPARSE", 2)
    monkeypatch.setattr(index_module, "MEMORY_RECORDS", 100)  # the larger runs in files
    db = tmp_path / "pos.db"
    wal_database_of_random_rows(db, 1500)
    repo, key_file = new_repository(tmp_path, pack_size=64 * 1024)
    result = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=2)
    names = sorted(repo.backend.list("index"))
    assert len(names) >= 3
    blobs = len(repo.index)
    # A later index file that repeats the first one's packs and says it supersedes it.
    packs, _ = decode_index(repo.load_sealed("index", names[0]), names[0])
    repo.save_sealed("index", encode_index(dict(packs), supersedes=[names[0]]))

    monkeypatch.setattr(repo_module, "LOAD_HOLD", hold)
    fresh = reopen(repo, key_file)
    reads = count_index_reads(fresh)
    assert fresh.load_index() == []
    assert len(fresh.index) == blobs  # the superseded file's blobs are not counted twice
    assert len(reads) == (len(names) + 1) * (2 if hold == 0 else 1) - (1 if hold == 0 else 0)
    assert fresh.index.generation >= 2  # written out as runs while loading, not all at once at the end
    (restored,) = restore_snapshot(fresh, result.manifest, tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == result.manifest.entries[0].sha256
