"""A database snapshot built on its parent's pages has no SHA-256 of the whole file: a restore holds
every chunk it writes to the keyed id the snapshot names at that place, and refuses anything else
before the file gets its name."""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.contentcheck import PageIdCheck
from capsule.adapters.repository.crypto import MasterKey, Sealer
from capsule.adapters.repository.entry_rules import check_content
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite.backup import backup_database
from capsule.domain.manifest import Entry, Manifest, SqliteInfo
from tests.unit.support import new_repository, reopen, wal_database_of_random_rows

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)
PAGE = 4096
SEALER = Sealer(MasterKey.generate())


def _ids(data: bytes, chunk: int) -> bytes:
    return SEALER.blob_ids(data, chunk)


def _fed(check: PageIdCheck, data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        check.update(memoryview(data)[a:b])
    check.finish()


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.integers(1, 9),
    tail=st.integers(0, 511),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    id_groups=st.integers(1, 4),
)
def test_bytes_given_in_any_pieces_match_their_ids(
    chunks: int, tail: int, cuts: list[int], id_groups: int
) -> None:
    chunk = 512
    data = os.urandom(chunks * chunk + tail)
    ids = _ids(data, chunk)
    check = PageIdCheck(SEALER, chunk, "pos.db")
    step = -(-len(ids) // 32 // id_groups) * 32
    for start in range(0, len(ids), step):
        check.expect(ids[start : start + step])
    _fed(check, data, cuts)


@settings(max_examples=60, deadline=None)
@given(chunks=st.integers(1, 9), at=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_byte_changed_is_refused_with_the_offset_of_its_chunk(
    chunks: int, at: int, cuts: list[int]
) -> None:
    chunk = 512
    data = bytearray(os.urandom(chunks * chunk))
    ids = _ids(bytes(data), chunk)
    at %= len(data)
    data[at] ^= 0x01
    check = PageIdCheck(SEALER, chunk, "pos.db")
    check.expect(ids)
    with pytest.raises(
        IntegrityError, match=f"pos.db: the bytes restored at offset {at - at % chunk} do not"
    ):
        _fed(check, bytes(data), cuts)


def test_a_file_that_ends_early_is_refused() -> None:
    data = os.urandom(4 * 512)
    check = PageIdCheck(SEALER, 512, "pos.db")
    check.expect(_ids(data, 512))
    check.update(data[:1024])
    with pytest.raises(IntegrityError, match="ends after 2 chunk"):
        check.finish()


def _changed_page(db: Path) -> tuple[int, bytes]:
    """Change one row; return (page number, its new bytes), the WAL folded into the file."""
    before = db.read_bytes()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE t SET body = randomblob(900) WHERE id = 3000")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    after = db.read_bytes()
    changed = [k for k in range(0, len(after), PAGE) if after[k : k + PAGE] != before[k : k + PAGE]]
    assert changed
    return changed[0] // PAGE, after[changed[0] : changed[0] + PAGE]


@pytest.mark.parametrize("workers", [0, 1], ids=["restored-in-process", "restored-by-workers"])
def test_a_blob_whose_bytes_are_not_its_id_never_reaches_the_restored_database(
    tmp_path: Path, workers: int
) -> None:
    db = tmp_path / "pos.db"
    wal_database_of_random_rows(db, 6000)
    repo, key_file = new_repository(tmp_path)
    first = backup_database(repo, db, tmp_path / "staging", now=T0, workers=1)
    assert first.manifest.entries[0].sha256 is not None

    # A blob stored under the id the changed page will have, holding other bytes: what a backup
    # with a fault between hashing and sealing would leave. The next backup finds the id stored.
    number, page = _changed_page(db)
    forged = reopen(repo, key_file)
    forged.ensure_index()
    forged.add(forged.prepare(BLOB_DATA, bytes(PAGE), forged.sealer.blob_id(page)))
    forged.flush()
    second = backup_database(
        reopen(repo, key_file), db, tmp_path / "staging", now=T0 + timedelta(hours=1), workers=1
    )
    entry = second.manifest.entries[0]
    assert entry.sha256 is None and second.manifest.totals.new_blobs == 0

    out = tmp_path / "restored"
    # Opened in this process, each blob is checked against its id; through the workers, the bytes
    # written are checked against the snapshot's ids.
    expected = "does not match its id" if workers == 0 else "do not match the snapshot's id"
    with pytest.raises(IntegrityError, match=expected):
        restore_snapshot(reopen(repo, key_file), second.manifest, out, workers=workers)
    assert not (out / "pos.db").exists()
    assert not [p for p in out.glob("*") if p.is_file()], "nothing left half-restored"

    # The snapshot before it restores as it was.
    (done,) = restore_snapshot(reopen(repo, key_file), first.manifest, tmp_path / "first", workers=workers)
    assert done.sha256 == first.manifest.entries[0].sha256
    assert number * PAGE < entry.size
    assert hashlib.sha256(done.path.read_bytes()).hexdigest() == done.sha256


def test_only_a_manifest_of_version_3_may_name_a_database_without_its_sha256(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    wal_database_of_random_rows(db, 600)
    repo, key_file = new_repository(tmp_path)
    first = backup_database(repo, db, tmp_path / "staging", now=T0, workers=1)
    second = backup_database(
        reopen(repo, key_file), db, tmp_path / "staging", now=T0 + timedelta(hours=1), workers=1
    )
    assert (first.manifest.version, second.manifest.version) == (2, 3)
    assert reopen(repo, key_file).load_snapshot(second.snapshot_id) == second.manifest
    with pytest.raises(ValueError, match="a version 2 manifest names a file without its SHA-256"):
        Manifest.model_validate_json(second.manifest.model_copy(update={"version": 2}).model_dump_json())
    # A files snapshot's file always has its SHA-256, whatever the version.
    image = Entry(path="a.jpg", size=1, mode=0o644, mtime_ns=0, blobs=["00" * 32], sha256="00" * 32)
    with pytest.raises(ValueError, match="has no SHA-256"):
        Entry.model_validate({**image.model_dump(), "sha256": None})


def test_content_without_a_sha256_passes_only_where_its_ids_were_checked() -> None:
    info = SqliteInfo(page_size=4096, page_count=1, journal_mode="wal", pages_per_chunk=1)
    entry = Entry(path="pos.db", size=4096, mode=0o644, mtime_ns=0, blobs=["00" * 32], sqlite=info)
    check_content(entry, 4096, "ab" * 32, ids_checked=True)
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        check_content(entry, 4096, "ab" * 32)  # e.g. a files restore, which checks no ids
    with pytest.raises(IntegrityError, match="4095 bytes, not 4096"):
        check_content(entry, 4095, "ab" * 32, ids_checked=True)
