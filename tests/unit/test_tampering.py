"""Any change to a stored pack, index or snapshot is detected: an IntegrityError, never wrong data."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsule.adapters.errors import BlobNotFound, IntegrityError
from capsule.adapters.repository.backends.local import Kind
from capsule.adapters.repository.index import BlobLocation, header_records
from capsule.adapters.repository.pack import BLOB_DATA, BLOB_LIST, PackBuilder
from capsule.adapters.repository.rebuild import read_pack_header
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.verify import verify
from capsule.domain.manifest import Entry, Manifest, Totals
from tests.unit.support import flip_bit, new_repository, reopen, replaced

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
appended = st.binary(min_size=1, max_size=64)


@dataclass
class StoredFile:
    repo: Repository
    key_file: Path
    name: str
    path: Path
    original: bytes
    blobs: dict[bytes, bytes]


def _sample_blobs() -> list[bytes]:
    rng = random.Random(1234)
    return [
        b"",
        b"x",
        rng.randbytes(3000),
        b"sale;coffee;2.50\n" * 400,
        rng.randbytes(200),
    ]


def _store_blobs(repo: Repository) -> dict[bytes, bytes]:
    """The sample blobs in one pack, a list blob among data blobs, and an index file naming them:
    Capsule's backups write lists into packs of their own, but a reader must take both in one
    pack (packs written by earlier Capsules mix them), and damage to either must show."""
    out = {}
    builder = PackBuilder()
    for i, data in enumerate(_sample_blobs()):
        p = repo.prepare(BLOB_LIST if i == 1 else BLOB_DATA, data)
        builder.add(p.blob_id, p.blob_type, p.compression, p.sealed, p.plain_length)
        out[p.blob_id] = data
    pack_id, sealed = builder.finish(repo.sealer)
    repo.backend.write("data", pack_id, sealed)
    records = header_records(builder.header)
    repo.index.add_pack(pack_id, records)
    repo.save_index_file({pack_id: records})
    return out


def _manifest(blob_ids: list[bytes]) -> Manifest:
    entry = Entry(
        path="pos.db",
        size=0,
        mode=0o600,
        mtime_ns=0,
        sha256="0" * 64,
        blobs=[b.hex() for b in blob_ids],
    )
    totals = Totals(
        files=1, bytes=0, blobs=len(blob_ids), new_blobs=0, new_bytes=0, stored_bytes=0, duration_seconds=0.1
    )
    return Manifest(
        kind="database",
        time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        hostname="till-1",
        source="/srv/pos/pos.db",
        entries=[entry],
        totals=totals,
    )


def _stored_file(tmp: Path, kind: Kind) -> StoredFile:
    """A repository holding a few blobs, and its one file of `kind` (a snapshot is made for it)."""
    repo, key_file = new_repository(tmp)
    blobs = _store_blobs(repo)
    if kind == "snapshots":
        name = repo.save_snapshot(_manifest(list(blobs)))
    else:
        (name,) = repo.backend.list(kind)
    path = repo.backend.path_of(kind, name)
    return StoredFile(repo, key_file, name, path, path.read_bytes(), blobs)


@pytest.fixture(scope="module")
def pack_file(tmp_path_factory) -> StoredFile:
    return _stored_file(tmp_path_factory.mktemp("pack"), "data")


@pytest.fixture(scope="module")
def index_file(tmp_path_factory) -> StoredFile:
    return _stored_file(tmp_path_factory.mktemp("index"), "index")


@pytest.fixture(scope="module")
def snapshot_file(tmp_path_factory) -> StoredFile:
    return _stored_file(tmp_path_factory.mktemp("snapshot"), "snapshots")


# ---- packs -----------------------------------------------------------------------------------


def assert_pack_damage_detected(case: StoredFile) -> None:
    """Reading the pack fails somewhere with IntegrityError; whatever reads succeed are exact."""
    failures = 0
    for blob_id, data in case.blobs.items():
        try:
            got = case.repo.read_blob(blob_id)
        except IntegrityError:
            failures += 1
        else:
            assert got == data
    try:
        read_pack_header(case.repo, case.name)
    except IntegrityError:
        failures += 1
    assert failures > 0, "a damaged pack was read without any error"

    report = verify(reopen(case.repo, case.key_file), read_data=True)
    assert not report.ok
    assert any(case.name[:12] in p.subject for p in report.problems)


def test_intact_pack_reads_back_and_verifies(pack_file):
    for blob_id, data in pack_file.blobs.items():
        assert pack_file.repo.read_blob(blob_id) == data
    assert len(read_pack_header(pack_file.repo, pack_file.name)) == len(pack_file.blobs)
    assert verify(reopen(pack_file.repo, pack_file.key_file), read_data=True).ok


@PROPERTY
@given(data=st.data())
def test_pack_with_any_bit_flipped_fails_authentication(pack_file, data):
    bit = data.draw(st.integers(0, len(pack_file.original) * 8 - 1), label="bit")
    with replaced(pack_file.path, flip_bit(pack_file.original, bit)):
        assert_pack_damage_detected(pack_file)


@PROPERTY
@given(data=st.data())
def test_truncated_pack_is_detected(pack_file, data):
    keep = data.draw(st.integers(0, len(pack_file.original) - 1), label="kept bytes")
    with replaced(pack_file.path, pack_file.original[:keep]):
        assert_pack_damage_detected(pack_file)


@PROPERTY
@given(extra=appended)
def test_pack_with_bytes_appended_is_detected(pack_file, extra):
    with replaced(pack_file.path, pack_file.original + extra):
        assert_pack_damage_detected(pack_file)


def test_blob_cannot_be_passed_off_as_another_blob(pack_file):
    repo = pack_file.repo
    (first, second) = list(pack_file.blobs)[2:4]
    loc_first = repo.index.lookup(first)
    assert loc_first is not None
    sealed = repo.backend.read("data", loc_first.pack_id, loc_first.offset, loc_first.length)
    with pytest.raises(IntegrityError):
        repo.open_blob(second, loc_first, sealed)
    # Nor as the same blob under another type or compression flag.
    retyped = BlobLocation(
        loc_first.pack_id,
        1 - loc_first.blob_type,
        loc_first.compression,
        loc_first.offset,
        loc_first.length,
        loc_first.plain_length,
    )
    with pytest.raises(IntegrityError):
        repo.open_blob(first, retyped, sealed)
    recompressed = BlobLocation(
        loc_first.pack_id,
        loc_first.blob_type,
        1 - loc_first.compression,
        loc_first.offset,
        loc_first.length,
        loc_first.plain_length,
    )
    with pytest.raises(IntegrityError):
        repo.open_blob(first, recompressed, sealed)


def test_missing_pack_raises_blob_not_found(pack_file, tmp_path):
    moved = tmp_path / "pack"
    pack_file.path.rename(moved)
    try:
        with pytest.raises(BlobNotFound):
            pack_file.repo.read_blob(next(iter(pack_file.blobs)))
    finally:
        moved.rename(pack_file.path)


# ---- index files -----------------------------------------------------------------------------


def assert_index_damage_detected(case: StoredFile, name: str) -> None:
    with pytest.raises(IntegrityError):
        case.repo.load_sealed("index", name)
    fresh = reopen(case.repo, case.key_file)
    assert fresh.load_index() == [name]
    for blob_id in case.blobs:
        with pytest.raises(BlobNotFound):
            fresh.read_blob(blob_id)


def test_intact_index_loads(index_file):
    fresh = reopen(index_file.repo, index_file.key_file)
    assert fresh.load_index() == []
    for blob_id, data in index_file.blobs.items():
        assert fresh.read_blob(blob_id) == data


@PROPERTY
@given(data=st.data(), rename=st.booleans())
def test_index_with_any_bit_flipped_fails_authentication(index_file, data, rename):
    """Renamed to the damaged bytes' SHA-256 the name check passes; the seal must still catch it."""
    bit = data.draw(st.integers(0, len(index_file.original) * 8 - 1), label="bit")
    damaged = flip_bit(index_file.original, bit)
    if not rename:
        with replaced(index_file.path, damaged):
            assert_index_damage_detected(index_file, index_file.name)
        return
    new_name = hashlib.sha256(damaged).hexdigest()
    new_path = index_file.path.with_name(new_name)
    index_file.path.rename(new_path)
    try:
        with replaced(new_path, damaged):
            assert_index_damage_detected(index_file, new_name)
    finally:
        new_path.rename(index_file.path)


@PROPERTY
@given(data=st.data())
def test_truncated_index_is_detected(index_file, data):
    keep = data.draw(st.integers(0, len(index_file.original) - 1), label="kept bytes")
    with replaced(index_file.path, index_file.original[:keep]):
        assert_index_damage_detected(index_file, index_file.name)


@PROPERTY
@given(extra=appended)
def test_index_with_bytes_appended_is_detected(index_file, extra):
    with replaced(index_file.path, index_file.original + extra):
        assert_index_damage_detected(index_file, index_file.name)


# ---- snapshots -------------------------------------------------------------------------------


def listed_snapshots(repo: Repository) -> list[str]:
    """Names `snapshots()` yields; a damaged snapshot is never among them (skipped, or an error)."""
    try:
        return [name for name, _ in repo.snapshots()]
    except IntegrityError:
        return []


def test_intact_snapshot_loads(snapshot_file):
    manifest = snapshot_file.repo.load_snapshot(snapshot_file.name)
    assert manifest == _manifest(list(snapshot_file.blobs))
    assert listed_snapshots(snapshot_file.repo) == [snapshot_file.name]


@PROPERTY
@given(data=st.data(), rename=st.booleans())
def test_snapshot_with_any_bit_flipped_fails_authentication(snapshot_file, data, rename):
    bit = data.draw(st.integers(0, len(snapshot_file.original) * 8 - 1), label="bit")
    damaged = flip_bit(snapshot_file.original, bit)
    name, path = snapshot_file.name, snapshot_file.path
    if rename:
        name = hashlib.sha256(damaged).hexdigest()
        path = snapshot_file.path.with_name(name)
        snapshot_file.path.rename(path)
    try:
        with replaced(path, damaged):
            with pytest.raises(IntegrityError):
                snapshot_file.repo.load_snapshot(name)
            assert name not in listed_snapshots(snapshot_file.repo)
    finally:
        if rename:
            path.rename(snapshot_file.path)


@PROPERTY
@given(data=st.data())
def test_truncated_snapshot_is_detected(snapshot_file, data):
    keep = data.draw(st.integers(0, len(snapshot_file.original) - 1), label="kept bytes")
    with replaced(snapshot_file.path, snapshot_file.original[:keep]), pytest.raises(IntegrityError):
        snapshot_file.repo.load_snapshot(snapshot_file.name)


@PROPERTY
@given(extra=appended)
def test_snapshot_with_bytes_appended_is_detected(snapshot_file, extra):
    with replaced(snapshot_file.path, snapshot_file.original + extra), pytest.raises(IntegrityError):
        snapshot_file.repo.load_snapshot(snapshot_file.name)


def test_sealed_file_cannot_pass_for_another_kind(tmp_path):
    """An index copied into snapshots/ (or the reverse) keeps its name but fails its seal."""
    repo, _ = new_repository(tmp_path)
    blobs = _store_blobs(repo)
    snapshot = repo.save_snapshot(_manifest(list(blobs)))
    (index,) = repo.backend.list("index")

    repo.backend.write("snapshots", index, repo.backend.read("index", index))
    with pytest.raises(IntegrityError, match="failed authentication"):
        repo.load_snapshot(index)
    repo.backend.write("index", snapshot, repo.backend.read("snapshots", snapshot))
    with pytest.raises(IntegrityError, match="failed authentication"):
        repo.load_sealed("index", snapshot)


def test_missing_snapshot_file_is_an_integrity_error(snapshot_file):
    with pytest.raises(IntegrityError, match="missing"):
        snapshot_file.repo.load_snapshot("ab" * 32)


def test_every_bit_of_pack_header_and_trailer_is_protected(pack_file):
    """Exhaustive over the pack's tail: the sealed header and the trailer after it."""
    header_len = int.from_bytes(pack_file.original[-8:-4], "little")
    tail_start = len(pack_file.original) - header_len - 8
    try:
        for bit in range(tail_start * 8, len(pack_file.original) * 8):
            pack_file.path.write_bytes(flip_bit(pack_file.original, bit))
            with pytest.raises(IntegrityError):
                read_pack_header(pack_file.repo, pack_file.name)
    finally:
        pack_file.path.write_bytes(pack_file.original)
    assert len(read_pack_header(pack_file.repo, pack_file.name)) == len(pack_file.blobs)
