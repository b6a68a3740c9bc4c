"""The index cache: read back instead of the index files, and only while it still tells the truth."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.adapters.repository import index as index_module
from capsule.adapters.repository import indexcache
from capsule.adapters.repository import repo as repo_module
from capsule.adapters.repository.index import decode_index, encode_index
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.repository.verify import verify
from capsule.adapters.sqlite.backup import BackupResult, backup_database
from tests.unit.support import count_index_reads, new_repository, reopen, wal_database_of_random_rows


@pytest.fixture(autouse=True)
def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repo_module, "INDEX_FLUSH_BLOBS", 60)  # several index files
    monkeypatch.setattr(indexcache, "FRAME_BYTES", 4096)  # many frames


def _opened(repo: Repository, key_file: Path, cache: Path | None) -> tuple[Repository, list[str]]:
    """A new handle on `repo` using `cache`, and the list of index files it decodes."""
    fresh = reopen(repo, key_file)
    fresh.cache_dir = cache
    return fresh, count_index_reads(fresh)


def _locations(repo: Repository, ids: list[bytes]) -> list[object]:
    return list(repo.index.locate_many(ids))


def _ids(repo: Repository) -> list[bytes]:
    found = [blob_id for _, blobs in repo.index.by_pack() for blob_id, _ in blobs]
    return [*found, *(os.urandom(32) for _ in range(20))]


def _backed_up(tmp_path: Path, rows: int = 600) -> tuple[Repository, Path, Path, BackupResult]:
    tmp_path.mkdir(exist_ok=True)
    db = tmp_path / "pos.db"
    wal_database_of_random_rows(db, rows)
    repo, key_file = new_repository(tmp_path, pack_size=64 * 1024)
    repo.cache_dir = tmp_path / "cache"
    result = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=2)
    return repo, key_file, db, result


def test_a_backup_leaves_a_cache_that_the_next_command_reads_instead_of_the_index_files(tmp_path):
    repo, key_file, _, result = _backed_up(tmp_path)
    assert len(list(repo.backend.list("index"))) >= 2
    path = indexcache.cache_path(tmp_path / "cache", repo.id)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    ids = _ids(cold)

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    assert cached.load_index() == []
    assert reads == []  # nothing decoded
    assert len(cached.index) == len(cold.index) == len(ids) - 20
    assert _locations(cached, ids) == _locations(cold, ids)
    assert _locations(cached, ids)[-20:] == [None] * 20
    (restored,) = restore_snapshot(cached, result.manifest, tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == result.manifest.entries[0].sha256


def test_index_files_written_since_are_read_over_the_cache_which_then_catches_up(tmp_path):
    repo, key_file, db, _ = _backed_up(tmp_path)
    before = set(repo.backend.list("index"))
    # A second backup by a process without the cache: the cache now lacks its index files.
    other = reopen(repo, key_file)
    wal_database_of_random_rows(db, 300)
    backup_database(other, db, tmp_path / "staging", now=datetime.now(UTC), workers=2)
    new = set(repo.backend.list("index")) - before
    assert new

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    cached.load_index()
    assert set(reads) == new  # only the new files decoded (some twice: the two passes)
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    ids = _ids(cold)
    assert _locations(cached, ids) == _locations(cold, ids)

    again, reads = _opened(repo, key_file, tmp_path / "cache")
    again.load_index()
    assert reads == []  # the load above brought the cache up to date
    assert _locations(again, ids) == _locations(cold, ids)


def test_a_cache_holding_a_superseded_index_file_is_not_used(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    names = sorted(repo.backend.list("index"))
    packs, _ = decode_index(repo.load_sealed("index", names[0]), names[0])
    repo.save_sealed("index", encode_index(dict(packs), supersedes=[names[0]]))

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    assert cached.load_index() == []
    assert len(set(reads)) == len(names) + 1  # every file read again
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    ids = _ids(cold)
    assert len(cached.index) == len(cold.index)  # the superseded file's blobs not counted twice
    assert _locations(cached, ids) == _locations(cold, ids)


def test_a_cache_is_not_used_once_an_index_file_it_holds_is_gone(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    names = sorted(repo.backend.list("index"))
    repo.backend.remove("index", names[0])

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    cached.load_index()
    assert set(reads) == set(names[1:])
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    assert len(cached.index) == len(cold.index)
    ids = _ids(cold)
    assert _locations(cached, ids) == _locations(cold, ids)


def test_a_cache_is_not_used_once_a_pack_went_missing(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    lost = sorted(repo.backend.list("data"))[0]
    repo.backend.remove("data", lost)

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    cached.load_index()
    assert reads  # read again, so the lost pack is known gone
    lost_number = cached.index.pack_ids.index(lost)
    assert cached.index.state()[1] == [lost_number]


def test_a_cache_written_once_a_pack_was_missing_still_counts_its_blobs_as_not_stored(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    lost = sorted(repo.backend.list("data"))[0]
    lost_ids = [blob_id for pack, blobs in repo.index.by_pack() if pack == lost for blob_id, _ in blobs]
    repo.backend.remove("data", lost)
    first, _ = _opened(repo, key_file, tmp_path / "cache")
    first.load_index()  # reads the index files and writes a cache that knows the pack is gone

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    cached.load_index()

    assert reads == []  # the cache was used
    assert lost_ids and cached.index.gone_packs == 1
    assert cached.known_many(lost_ids) == [False] * len(lost_ids)
    assert all(loc is not None and loc.pack_id == lost for loc in cached.index.locate_many(lost_ids))


@pytest.mark.parametrize("damage", ["flipped", "truncated", "foreign", "not-ours"])
def test_a_damaged_or_foreign_cache_is_ignored_and_then_written_again(tmp_path, damage):
    repo, key_file, _, _ = _backed_up(tmp_path / "a")
    path = indexcache.cache_path(tmp_path / "a" / "cache", repo.id)
    data = path.read_bytes()
    if damage == "flipped":
        data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]
    elif damage == "truncated":
        data = data[:-200]  # part of the last frame
    elif damage == "foreign":  # the cache of another repository, under this one's name
        other, _, _, _ = _backed_up(tmp_path / "b", rows=300)
        data = indexcache.cache_path(tmp_path / "b" / "cache", other.id).read_bytes()
    else:
        data = b"not a cache at all"
    path.write_bytes(data)

    cached, reads = _opened(repo, key_file, tmp_path / "a" / "cache")
    assert cached.load_index() == []
    assert reads
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    ids = _ids(cold)
    assert _locations(cached, ids) == _locations(cold, ids)
    assert path.read_bytes() != data  # written again
    again, reads = _opened(repo, key_file, tmp_path / "a" / "cache")
    again.load_index()
    assert reads == []


def test_a_cache_dropping_its_last_frames_is_refused(tmp_path):
    repo, _, _, _ = _backed_up(tmp_path)
    path = indexcache.cache_path(tmp_path / "cache", repo.id)
    data = path.read_bytes()
    # Cut exactly at a frame boundary: what is left authenticates frame by frame.
    at, ends = len(indexcache.MAGIC), []
    while at < len(data):
        at += 4 + int.from_bytes(data[at : at + 4], "little")
        ends.append(at)
    assert len(ends) > 3
    path.write_bytes(data[: ends[-2]])
    with pytest.raises(indexcache.CacheUnusable, match="ends early"):
        indexcache.load(
            tmp_path / "cache",
            repo.id,
            repo.sealer,
            index_names=set(repo.backend.list("index")),
            on_disk=set(repo.backend.list("data")),
        )


def test_runs_in_files_go_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "LOAD_AT", 16)
    monkeypatch.setattr(index_module, "MERGE_AT", 16)
    monkeypatch.setattr(index_module, "SPARSE", 4)
    monkeypatch.setattr(index_module, "FILE_SPARSE", 2)
    monkeypatch.setattr(index_module, "MEMORY_RECORDS", 100)  # the larger runs in files
    repo, key_file, _, result = _backed_up(tmp_path)
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    ids = _ids(cold)

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    cached.load_index()
    assert reads == []
    runs = cached.index.state()[2]
    assert any(r.recs is None for r in runs) and any(r.recs is not None for r in runs)
    assert _locations(cached, ids) == _locations(cold, ids)
    (restored,) = restore_snapshot(cached, result.manifest, tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == result.manifest.entries[0].sha256


def test_an_empty_index_is_cached_too(tmp_path):
    repo, key_file = new_repository(tmp_path)
    repo.cache_dir = tmp_path / "cache"
    assert repo.load_index() == []
    assert indexcache.cache_path(tmp_path / "cache", repo.id).exists()
    again, reads = _opened(repo, key_file, tmp_path / "cache")
    assert again.load_index() == []
    assert len(again.index) == 0
    # Packs only in an index file written later are found.
    wal_database_of_random_rows(tmp_path / "pos.db", 100)
    backup_database(reopen(repo, key_file), tmp_path / "pos.db", tmp_path / "staging", now=datetime.now(UTC))
    later, reads = _opened(repo, key_file, tmp_path / "cache")
    later.load_index()
    assert reads and len(later.index) > 0


def test_the_cache_shows_no_id_and_no_pack_name(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    data = indexcache.cache_path(tmp_path / "cache", repo.id).read_bytes()
    cold, _ = _opened(repo, key_file, None)
    cold.load_index()
    ids = _ids(cold)[:-20]
    assert not any(blob_id[:12] in data for blob_id in ids)
    assert not any(pack.encode() in data or bytes.fromhex(pack)[:12] in data for pack in cold.index.pack_ids)
    assert not any(name.encode() in data for name in repo.backend.list("index"))


def test_verify_reads_every_index_file_whatever_the_cache_holds(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    name = sorted(repo.backend.list("index"))[0]
    path = repo.backend.path_of("index", name)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))

    fresh, _ = _opened(repo, key_file, tmp_path / "cache")
    report = verify(fresh)
    assert any(name[:12] in p.subject for p in report.problems)


def test_a_cache_folder_that_cannot_be_written_only_costs_the_cache(tmp_path):
    repo, key_file, _, _ = _backed_up(tmp_path)
    shutil.rmtree(tmp_path / "cache")
    (tmp_path / "cache").write_text("a file where the folder should be")
    fresh, reads = _opened(repo, key_file, tmp_path / "cache")
    assert fresh.load_index() == []
    assert reads
    assert len(fresh.index) > 0


@pytest.mark.parametrize("header", [b"[]", b"{}", b"not json", b'{"format": 1, "record": 3}'])
def test_a_cache_whose_sealed_header_makes_no_sense_is_ignored(tmp_path, header):
    repo, key_file, _, _ = _backed_up(tmp_path)
    path = indexcache.cache_path(tmp_path / "cache", repo.id)
    sealed = repo.sealer.seal(header, indexcache._aad(repo.id, 0, True))
    path.write_bytes(indexcache.MAGIC + len(sealed).to_bytes(4, "little") + sealed)

    cached, reads = _opened(repo, key_file, tmp_path / "cache")
    assert cached.load_index() == []
    assert reads
    assert len(cached.index) > 0
