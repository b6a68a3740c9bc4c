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


def _backed_up(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A repository of one database backup written as several index files, in runs as it loads."""
    monkeypatch.setattr(repo_module, "INDEX_FLUSH_BLOBS", 40)  # many index files
    monkeypatch.setattr(index_module, "LOAD_AT", 16)  # a run for each index file as it loads
    monkeypatch.setattr(index_module, "SPARSE", 4)
    monkeypatch.setattr(index_module, "FILE_SPARSE", 2)
    monkeypatch.setattr(index_module, "MEMORY_RECORDS", 100)  # the larger runs in files
    db = tmp_path / "pos.db"
    wal_database_of_random_rows(db, 1500)
    repo, key_file = new_repository(tmp_path, pack_size=64 * 1024)
    result = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=2)
    return repo, key_file, result


def _superseding(repo, names: list[str], *, read_first: bool) -> str:  # type: ignore[no-untyped-def]
    """Store an index file that repeats the first file's packs and supersedes it, named (names are
    hashes of sealed bytes, new each time) so that a load reads it before every other file, or after
    the file it supersedes."""
    packs, _ = decode_index(repo.load_sealed("index", names[0]), names[0])
    while True:
        name = repo.save_sealed("index", encode_index(dict(packs), supersedes=[names[0]]))
        if (name < min(names)) if read_first else (name > names[0]):
            return name
        repo.backend.remove("index", name)


@pytest.mark.parametrize(
    "read_first", [True, False], ids=["superseding-read-first", "superseding-read-later"]
)
@pytest.mark.parametrize("hold", [0, 10**9], ids=["read-twice", "held"])
def test_index_files_load_in_runs_skip_what_is_superseded_and_restore(
    tmp_path, monkeypatch, hold, read_first
):
    repo, key_file, result = _backed_up(tmp_path, monkeypatch)
    names = sorted(repo.backend.list("index"))
    assert len(names) >= 3
    blobs = len(repo.index)
    _superseding(repo, names, read_first=read_first)

    monkeypatch.setattr(repo_module, "LOAD_HOLD", hold)
    fresh = reopen(repo, key_file)
    reads = count_index_reads(fresh)
    assert fresh.load_index() == []
    assert len(fresh.index) == blobs  # the superseded file's blobs are not counted twice
    files = len(names) + 1
    if read_first:
        # Known superseded before it is read: skipped in the one pass.
        assert len(reads) == files
    else:
        # Staged, then found superseded: the one pass is let go for the two passes (the second
        # reads again what was not held).
        assert len(reads) == files + files + (files - 1 if hold == 0 else 0)
    assert fresh.index.generation >= 2  # written out as runs while loading, not all at once at the end
    (restored,) = restore_snapshot(fresh, result.manifest, tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == result.manifest.entries[0].sha256


def test_without_a_superseding_file_each_index_file_is_read_once(tmp_path, monkeypatch):
    """The common case (no prune or repair left superseded files behind): one read per file, even
    when nothing is held between passes, and the same index as the two passes give."""
    repo, key_file, result = _backed_up(tmp_path, monkeypatch)
    names = sorted(repo.backend.list("index"))
    monkeypatch.setattr(repo_module, "LOAD_HOLD", 0)
    fresh = reopen(repo, key_file)
    reads = count_index_reads(fresh)
    assert fresh.load_index(use_cache=False) == []
    assert sorted(reads) == names
    two_passes = reopen(repo, key_file)
    monkeypatch.setattr(two_passes, "_index_in_one_pass", lambda *_: None)
    assert two_passes.load_index(use_cache=False) == []
    assert sorted(fresh.index.pack_ids) == sorted(two_passes.index.pack_ids)
    ids = [bytes.fromhex(b) for entry in result.manifest.entries for b in entry.blob_lists]
    assert fresh.index.locate_many(ids) == two_passes.index.locate_many(ids)
    assert len(fresh.index) == len(two_passes.index) == len(repo.index)
