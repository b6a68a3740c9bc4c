"""Blobs survive sealing, packing and reading back byte for byte, compressed only when it pays."""

from __future__ import annotations

import hashlib
import random

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsule.adapters.repository.blobcodec import MIN_COMPRESSION_GAIN
from capsule.adapters.repository.crypto import OVERHEAD, MasterKey, Sealer
from capsule.adapters.repository.index import BlobLocation, header_records
from capsule.adapters.repository.pack import (
    BLOB_DATA,
    BLOB_LIST,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    PackBuilder,
    parse_header,
)
from capsule.adapters.repository.rebuild import read_pack_header
from tests.unit.support import new_repository, reopen

MAX_BLOB = 64 * 1024
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _repeated(unit: bytes, size: int) -> bytes:
    return (unit * (size // len(unit) + 1))[:size]


def _text(seed: int, size: int) -> bytes:
    words = ["coffee", "latte", "receipt", "total", "VAT", "€", "croissant", "\n", "12.50"]
    rng = random.Random(seed)
    out = " ".join(rng.choice(words) for _ in range(size // 4 + 1)).encode()
    return out[:size]


sizes = st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, MAX_BLOB))
random_payloads = st.builds(_random_bytes, st.integers(0, 2**32), sizes)
compressible_payloads = st.one_of(
    st.builds(_repeated, st.binary(min_size=1, max_size=32), sizes),
    st.builds(_text, st.integers(0, 2**32), sizes),
)
payloads = st.one_of(st.binary(max_size=2048), random_payloads, compressible_payloads)


def expected_compression(data: bytes, level: int) -> int:
    if not data:
        return COMPRESSION_NONE
    packed = zstandard.ZstdCompressor(level=level).compress(data)
    worth_it = len(packed) <= len(data) * (1 - MIN_COMPRESSION_GAIN)
    return COMPRESSION_ZSTD if worth_it else COMPRESSION_NONE


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory):
    return new_repository(tmp_path_factory.mktemp("blobs"))


@PROPERTY
@given(data=payloads)
def test_any_bytes_round_trip_through_prepare_add_flush_and_read_blob(shared_repo, data):
    repo, key_file = shared_repo
    already_stored = repo.has_blob(repo.sealer.blob_id(data))

    prepared = repo.prepare(BLOB_DATA, data)
    assert prepared.blob_id == repo.sealer.blob_id(data)
    assert prepared.plain_length == len(data)
    assert prepared.compression == expected_compression(data, repo.compression_level)
    assert repo.add(prepared) is not already_stored
    repo.flush()

    assert repo.read_blob(prepared.blob_id) == data
    loc = repo.index.lookup(prepared.blob_id)
    assert loc is not None
    assert loc.plain_length == len(data)
    if not already_stored:
        assert loc.compression == prepared.compression
        assert loc.length == len(prepared.sealed)
    # A second handle sees the same bytes through the index files alone.
    other = reopen(repo, key_file)
    other.load_index()
    assert other.read_blob(prepared.blob_id) == data


@PROPERTY
@given(data=random_payloads.filter(lambda d: len(d) >= 128))
def test_incompressible_bytes_are_stored_raw(shared_repo, data):
    repo, _ = shared_repo
    prepared = repo.prepare(BLOB_DATA, data)
    assert prepared.compression == COMPRESSION_NONE
    assert len(prepared.sealed) == len(data) + OVERHEAD


@PROPERTY
@given(unit=st.binary(min_size=1, max_size=32), size=st.integers(512, MAX_BLOB))
def test_repetitive_bytes_are_stored_compressed_and_smaller(shared_repo, unit, size):
    repo, _ = shared_repo
    data = _repeated(unit, size)
    prepared = repo.prepare(BLOB_DATA, data)
    assert prepared.compression == COMPRESSION_ZSTD
    assert len(prepared.sealed) < len(data)
    repo.add(prepared)
    repo.flush()
    assert repo.read_blob(prepared.blob_id) == data


def test_empty_blob_round_trips(tmp_path):
    repo, _ = new_repository(tmp_path)
    prepared = repo.prepare(BLOB_DATA, b"")
    assert prepared.compression == COMPRESSION_NONE
    assert len(prepared.sealed) == OVERHEAD
    repo.add(prepared)
    repo.flush()
    assert repo.read_blob(prepared.blob_id) == b""


def test_compression_can_be_turned_off(tmp_path):
    repo, _ = new_repository(tmp_path)
    data = b"A" * 10_000
    prepared = repo.prepare(BLOB_DATA, data, compress=False)
    assert prepared.compression == COMPRESSION_NONE
    assert len(prepared.sealed) == len(data) + OVERHEAD


def test_stored_blob_does_not_show_its_plaintext(tmp_path):
    repo, _ = new_repository(tmp_path)
    marker = b"CARD-4111111111111111-"
    data = marker * 50
    repo.add(repo.prepare(BLOB_DATA, data, compress=False))
    repo.flush()
    (pack,) = repo.backend.list("data")
    stored = repo.backend.read("data", pack)
    assert marker not in stored
    assert repo.sealer.blob_id(data) not in stored  # ids are only in the sealed header


def test_blob_ids_are_keyed_so_two_repositories_give_different_ids(tmp_path):
    first, _ = new_repository(tmp_path / "one")
    second, _ = new_repository(tmp_path / "two")
    data = b"the same receipt"
    assert first.sealer.blob_id(data) != second.sealer.blob_id(data)
    assert first.sealer.blob_id(data) == first.sealer.blob_id(data)


def test_same_bytes_are_stored_once(tmp_path):
    repo, _ = new_repository(tmp_path)
    data = _random_bytes(7, 5000)
    assert repo.add(repo.prepare(BLOB_DATA, data)) is True
    assert repo.add(repo.prepare(BLOB_DATA, data)) is False  # still in the open pack
    repo.flush()
    assert repo.add(repo.prepare(BLOB_DATA, data)) is False  # now in the index
    repo.flush()
    assert len(list(repo.backend.list("data"))) == 1


@PROPERTY
@given(blobs=st.lists(payloads, min_size=1, max_size=8))
def test_pack_builder_header_lists_every_blob_where_it_was_put(shared_repo, blobs):
    repo, _ = shared_repo
    builder = PackBuilder()
    prepared = [repo.prepare(BLOB_DATA if i % 2 else BLOB_LIST, b) for i, b in enumerate(blobs)]
    for p in prepared:
        builder.add(p.blob_id, p.blob_type, p.compression, p.sealed, p.plain_length)
    expected = header_records(builder.header).tolist()
    pack_id, data = builder.finish(repo.sealer)

    assert pack_id == hashlib.sha256(data).hexdigest()
    assert data.endswith(b"CPK1")
    header = parse_header(repo.sealer, data, len(data), pack_id)
    assert [tuple(b) for b in header] == [(bytes(r[0]), *r[1:]) for r in expected]
    for entry, original, p in zip(header, blobs, prepared, strict=True):
        loc = BlobLocation(pack_id, *entry[1:])
        assert entry.blob_type == p.blob_type
        sealed = data[entry.offset : entry.offset + entry.length]
        assert repo.open_blob(entry.blob_id, loc, sealed) == original


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blobs=st.lists(st.one_of(random_payloads, compressible_payloads), min_size=2, max_size=12))
def test_blobs_spread_over_many_small_packs_all_read_back(tmp_path_factory, blobs):
    repo, key_file = new_repository(tmp_path_factory.mktemp("small-packs"), pack_size=8 * 1024)
    ids = []
    for b in blobs:
        p = repo.prepare(BLOB_DATA, b)
        repo.add(p)
        ids.append(p.blob_id)
    repo.flush()

    other = reopen(repo, key_file)
    assert other.load_index() == []
    for blob_id, original in zip(ids, blobs, strict=True):
        assert other.read_blob(blob_id) == original
    # Every pack's own header agrees with the index.
    for pack in other.backend.list("data"):
        for entry in read_pack_header(other, pack):
            loc = other.index.lookup(entry.blob_id)
            assert loc is not None
            assert (loc.pack_id, loc.offset, loc.length) == (pack, entry.offset, entry.length)


@pytest.mark.parametrize("length", [0, 1, 4096, 3 * 4096 + 5])
def test_ids_of_consecutive_pieces_are_each_piece_s_own_id(length: int) -> None:
    # The workers hash a block's pages with one hasher reset between pages: each id must be the
    # page's own, the last and shorter one included, or unchanged pages would stop deduplicating.
    sealer = Sealer(MasterKey.generate())
    data = random.Random(length).randbytes(length)
    expected = b"".join(sealer.blob_id(data[i : i + 4096]) for i in range(0, length, 4096))
    assert sealer.blob_ids(data, 4096) == expected
    assert len(expected) == 32 * -(-length // 4096)
