"""The index: its file encoding round-trips, and look-ups find every blob, one id or many at once."""

from __future__ import annotations

import hashlib
import random
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsule.adapters.errors import DiskFull, IntegrityError
from capsule.adapters.repository import index as index_module
from capsule.adapters.repository.index import (
    BlobLocation,
    Index,
    decode_index,
    encode_index,
    records,
)
from capsule.adapters.repository.pack import PackedBlob


def _pack_id(n: int) -> str:
    return hashlib.sha256(f"pack {n}".encode()).hexdigest()


def _blobs(ids: list[bytes], seed: int = 0) -> list[PackedBlob]:
    rng = random.Random(seed)
    out, offset = [], 0
    for blob_id in ids:
        length = rng.randint(28, 70_000)
        out.append(
            PackedBlob(blob_id, rng.randint(0, 1), rng.randint(0, 1), offset, length, rng.randint(0, 65536))
        )
        offset += length
    return out


def _location(pack_id: str, b: PackedBlob) -> BlobLocation:
    return BlobLocation(pack_id, *b[1:])


def _random_ids(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def _frozen_index(packs: dict[str, list[PackedBlob]]) -> Index:
    index = Index()
    decoded, _ = decode_index(encode_index({p: records(b) for p, b in packs.items()}), "test")
    for pack_id, recs in decoded:
        index.stage(pack_id, recs)
    index.freeze()
    return index


def test_index_encoding_round_trips():
    packs = {
        _pack_id(0): _blobs(_random_ids(5, 1), 1),
        _pack_id(1): _blobs(_random_ids(3, 2), 2),
        _pack_id(2): [],
    }
    old = [hashlib.sha256(b"old index").hexdigest(), hashlib.sha256(b"older").hexdigest()]

    decoded, superseded = decode_index(encode_index({p: records(b) for p, b in packs.items()}, old), "test")

    assert superseded == old
    assert [pack_id for pack_id, _ in decoded] == list(packs)
    for pack_id, recs in decoded:
        got = [
            PackedBlob(
                bytes(r["id"]),
                int(r["type"]),
                int(r["comp"]),
                int(r["offset"]),
                int(r["length"]),
                int(r["plain"]),
            )
            for r in recs
        ]
        assert got == packs[pack_id]


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 20), min_size=0, max_size=5),
    n_old=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)
def test_any_index_content_round_trips_and_any_cut_or_extra_byte_is_refused(sizes, n_old, seed):
    rng = random.Random(seed)
    packs = {_pack_id(rng.getrandbits(64)): _blobs(_random_ids(n, rng.getrandbits(32)), seed) for n in sizes}
    old = [rng.randbytes(32).hex() for _ in range(n_old)]
    encoded = encode_index({p: records(b) for p, b in packs.items()}, old)

    decoded, superseded = decode_index(encoded, "test")
    assert superseded == old
    assert {p: len(r) for p, r in decoded} == {p: len(b) for p, b in packs.items()}

    cut = rng.randrange(len(encoded))
    with pytest.raises(IntegrityError):
        decode_index(encoded[:cut], "test")
    with pytest.raises(IntegrityError):
        decode_index(encoded + b"\x00", "test")


@given(garbage=st.binary(max_size=300).filter(lambda b: not b.startswith((b"CIX1", b"CIX2"))))
def test_bytes_without_the_index_magic_are_refused(garbage):
    with pytest.raises(IntegrityError):
        decode_index(garbage, "test")


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"CIX1",
        b"CIX1" + _u32(0),  # no superseded count
        b"CIX1" + _u32(1) + _u32(0),  # claims a pack that is not there
        b"CIX1" + _u32(1) + bytes(32) + _u32(3) + bytes(46 * 2) + _u32(0),  # 3 records, 2 present
        b"CIX1" + _u32(0) + _u32(2) + bytes(32),  # 2 superseded ids, 1 present
        b"CIX1" + _u32(0) + _u32(0) + b"\x00",  # trailing byte
        b"CIX2" + _u32(1) + bytes(32) + _u32(2) + bytes(50 * 2 - 4) + _u32(0),  # version 2: 50-byte records
        b"CIX3" + _u32(0) + _u32(0),
    ],
    ids=[
        "empty",
        "magic-only",
        "no-superseded-count",
        "missing-pack",
        "missing-record",
        "missing-superseded-id",
        "trailing-byte",
        "short-record-v2",
        "other-magic",
    ],
)
def test_malformed_index_is_refused(data):
    with pytest.raises(IntegrityError, match="malformed"):
        decode_index(data, "test")


def test_smallest_valid_index_is_empty():
    assert decode_index(b"CIX1" + _u32(0) + _u32(0), "test") == ([], [])
    assert decode_index(b"CIX2" + _u32(0) + _u32(0), "test") == ([], [])


def test_a_version_1_index_reads_with_every_blob_alone_and_is_written_again_the_same():
    blobs = _blobs(_random_ids(50, 3))
    recs = records(blobs)
    v1 = encode_index({_pack_id(1): recs}, version=1)
    assert v1.startswith(b"CIX1") and len(v1) == 4 + 4 + 32 + 4 + 46 * 50 + 4
    [(pack_id, decoded)], _ = decode_index(v1, "test")
    assert pack_id == _pack_id(1)
    assert decoded.tolist() == recs.tolist()
    assert not decoded["within"].any()
    assert encode_index({_pack_id(1): decoded}, version=1) == v1


def test_a_version_1_index_cannot_hold_bundled_blobs():
    bundled = [b._replace(compression=2) for b in _blobs(_random_ids(3, 4))]
    with pytest.raises(ValueError, match="bundled"):
        encode_index({_pack_id(1): records(bundled)}, version=1)
    [(_, decoded)], _ = decode_index(encode_index({_pack_id(1): records(bundled)}), "test")
    assert decoded.tolist() == records(bundled).tolist()


def test_locate_many_finds_frozen_and_pending_blobs_and_misses_the_rest():
    frozen_ids = _random_ids(3000, 10)
    frozen_packs = {_pack_id(i): _blobs(frozen_ids[i * 300 : (i + 1) * 300], i) for i in range(10)}
    index = _frozen_index(frozen_packs)
    pending_ids = _random_ids(50, 11)
    pending = _blobs(pending_ids, 99)
    index.add_pack(_pack_id(100), records(pending))
    absent = _random_ids(200, 12)

    expected: dict[bytes, BlobLocation | None] = {}
    for pack_id, blobs in frozen_packs.items():
        expected.update((b.blob_id, _location(pack_id, b)) for b in blobs)
    expected.update((b.blob_id, _location(_pack_id(100), b)) for b in pending)
    expected.update((i, None) for i in absent)
    queries = list(expected)
    random.Random(3).shuffle(queries)

    assert index.locate_many(queries) == [expected[q] for q in queries]
    assert index.contains_many(queries) == [expected[q] is not None for q in queries]
    assert [index.lookup(q) for q in queries] == [expected[q] for q in queries]
    assert len(index) == 3050


def test_ids_sharing_their_first_eight_bytes_are_told_apart():
    prefix = bytes.fromhex("00ff00ff00ff00ff")
    twins = [prefix + bytes([i]) * 24 for i in (1, 2, 3)]
    stranger = prefix + bytes([9]) * 24  # same prefix, stored nowhere
    pending_twin = prefix + bytes([7]) * 24  # same prefix, only in the open run
    others = _random_ids(500, 4)

    packs = {
        _pack_id(0): _blobs([twins[0], *others[:250]], 0),
        _pack_id(1): _blobs([*others[250:], twins[2], twins[1]], 1),
    }
    index = _frozen_index(packs)
    index.add_pack(_pack_id(2), records(_blobs([pending_twin], 2)))
    expected = {b.blob_id: _location(p, b) for p, blobs in packs.items() for b in blobs}
    expected[pending_twin] = _location(_pack_id(2), _blobs([pending_twin], 2)[0])

    queries = [*twins, stranger, pending_twin, *others[:20], twins[1], stranger]
    got = index.locate_many(queries)
    assert got == [expected.get(q) for q in queries]
    assert index.contains_many(queries) == [q in expected for q in queries]
    assert index.lookup(stranger) is None
    for twin in twins:
        assert index.lookup(twin) == expected[twin]


def test_largest_prefix_values_are_found():
    """Prefixes at the top of the unsigned 64-bit range sort and compare as unsigned."""
    high = [bytes.fromhex("ffffffffffffffff") + bytes([i]) * 24 for i in range(3)]
    high.append(bytes.fromhex("8000000000000000") + bytes(24))
    low = [bytes(32), bytes(7) + b"\x01" + bytes(24)]
    packs = {_pack_id(0): _blobs(high + low, 0)}
    index = _frozen_index(packs)
    expected = {b.blob_id: _location(_pack_id(0), b) for b in packs[_pack_id(0)]}
    queries = [*high, *low, bytes.fromhex("ffffffffffffffff") + bytes([9]) * 24]
    assert index.locate_many(queries) == [expected.get(q) for q in queries]
    assert [index.lookup(q) for q in queries] == [expected.get(q) for q in queries]


def test_index_loaded_in_several_steps_keeps_everything():
    first = {_pack_id(0): _blobs(_random_ids(100, 20), 0)}
    second = {_pack_id(1): _blobs(_random_ids(100, 21), 1)}
    index = _frozen_index(first)
    decoded, _ = decode_index(encode_index({p: records(b) for p, b in second.items()}), "second")
    for pack_id, recs in decoded:
        index.stage(pack_id, recs)
    index.freeze()

    all_blobs = [(p, b) for packs in (first, second) for p, bs in packs.items() for b in bs]
    assert index.locate_many([b.blob_id for _, b in all_blobs]) == [_location(p, b) for p, b in all_blobs]
    assert len(index) == 200
    grouped = {pack_id: dict(blobs) for pack_id, blobs in index.by_pack()}
    assert grouped == {
        p: {b.blob_id: _location(p, b) for b in bs} for packs in (first, second) for p, bs in packs.items()
    }


def test_empty_index_finds_nothing():
    index = Index()
    ids = _random_ids(5, 0)
    assert index.locate_many(ids) == [None] * 5
    assert index.contains_many(ids) == [False] * 5
    assert index.locate_many([]) == []
    assert index.lookup(ids[0]) is None


def test_blobs_of_packs_added_in_this_run_are_found_before_and_after_merging():
    index = _frozen_index({_pack_id(0): _blobs(_random_ids(100, 30), 0)})
    added = {_pack_id(i): _blobs(_random_ids(40, 30 + i), i) for i in range(1, 6)}
    for pack_id, blobs in added.items():
        index.add_pack(pack_id, records(blobs))
    expected = [(b.blob_id, _location(p, b)) for p, bs in added.items() for b in bs]
    ids = [i for i, _ in expected]

    assert index.locate_many(ids) == [loc for _, loc in expected]
    assert all(index.contains_many(ids))
    index.freeze()
    assert index.locate_many(ids) == [loc for _, loc in expected]
    assert [index.lookup(i) for i in ids] == [loc for _, loc in expected]
    assert len(index) == 300


def test_record_layout_is_packed_little_endian():
    blob = PackedBlob(bytes(range(32)), 1, 1, 0x01020304, 0x0A0B0C0D, 7)
    encoded = encode_index({_pack_id(0): records([blob])})
    record = encoded[8 + 32 + 4 : 8 + 32 + 4 + 46]
    assert record == bytes(range(32)) + b"\x01\x01" + (0x01020304).to_bytes(4, "little") + (
        0x0A0B0C0D
    ).to_bytes(4, "little") + (7).to_bytes(4, "little")


@pytest.fixture(params=[10**9, 120, 0], ids=["in-memory", "some-in-files", "all-in-files"])
def small_runs(monkeypatch, request):
    """Tiny thresholds, so that a few hundred blobs go through every path a million would."""
    monkeypatch.setattr(index_module, "MERGE_AT", 50)
    monkeypatch.setattr(index_module, "LOAD_AT", 50)
    monkeypatch.setattr(index_module, "MEMORY_RECORDS", request.param)
    monkeypatch.setattr(index_module, "SPARSE", 4)
    monkeypatch.setattr(index_module, "FILE_SPARSE", 2)
    monkeypatch.setattr(index_module, "MAX_SPARSE_KEYS", 40)  # larger runs take larger blocks
    monkeypatch.setattr(index_module, "MAX_BLOOM_BITS", 1024)  # and let more absent ids through
    monkeypatch.setattr(index_module, "SLICE", 64)
    monkeypatch.setattr(index_module, "QUERY_CHUNK", 37)
    monkeypatch.setattr(index_module, "BY_PACK_BATCH", 30)
    return request.param


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 45), min_size=1, max_size=40), seed=st.integers(0, 2**16))
def test_runs_in_files_find_every_blob_through_many_merges(small_runs, sizes, seed):
    rng = random.Random(seed)
    index = Index()
    expected: dict[bytes, BlobLocation] = {}
    twin_prefix = rng.randbytes(8)
    for p, size in enumerate(sizes):
        # Some ids share their first 8 bytes with others, across packs and runs.
        ids = [
            (twin_prefix + rng.randbytes(24)) if rng.random() < 0.1 else rng.randbytes(32)
            for _ in range(size)
        ]
        blobs = _blobs(ids, p)
        index.add_pack(_pack_id(p), records(blobs))
        expected.update((b.blob_id, _location(_pack_id(p), b)) for b in blobs)
        absent = [rng.randbytes(32), twin_prefix + rng.randbytes(24)]
        queries = rng.sample(list(expected), min(len(expected), 60)) + absent
        assert index.locate_many(queries) == [expected.get(q) for q in queries]
    index.freeze()
    total = len(expected)
    assert len(index) == total
    # Runs merge like a binary counter: never more than about log2(total / MERGE_AT) + 1 of them.
    assert len(index._runs) <= max(1, total // 50).bit_length() + 1
    queries = [*expected, rng.randbytes(32)]
    assert index.locate_many(queries) == [expected.get(q) for q in queries]
    assert index.contains_many(queries) == [q in expected for q in queries]
    assert [index.lookup(q) for q in queries[:50]] == [expected.get(q) for q in queries[:50]]
    pos, packs, recs = index.columns(queries)
    assert (pos >= 0).tolist() == [q in expected for q in queries]
    for q, p, r, found in zip(queries, packs.tolist(), recs, (pos >= 0).tolist(), strict=True):
        if found:
            assert (index.pack_ids[p], int(r["offset"]), int(r["length"])) == (
                expected[q].pack_id,
                expected[q].offset,
                expected[q].length,
            )
    grouped = [(pack_id, dict(blobs)) for pack_id, blobs in index.by_pack()]
    assert [p for p, _ in grouped] == [_pack_id(p) for p, size in enumerate(sizes) if size]
    assert {b: loc for _, blobs in grouped for b, loc in blobs.items()} == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 45), min_size=1, max_size=30), seed=st.integers(0, 2**16))
def test_shared_keys_are_the_prefixes_two_records_share_across_runs(small_runs, sizes, seed):
    """Whatever runs (in memory, in files) the records sit in: a prefix counts once two records
    hold it, an id stored in two packs included, and no other prefix does."""
    rng = random.Random(seed)
    index = Index()
    counts: dict[bytes, int] = {}
    twin_prefix = rng.randbytes(8)
    stored: list[bytes] = []
    for p, size in enumerate(sizes):
        ids = []
        for _ in range(size):
            roll = rng.random()
            if roll < 0.1:
                ids.append(twin_prefix + rng.randbytes(24))  # another id, the same prefix
            elif roll < 0.2 and stored:
                ids.append(rng.choice(stored))  # the same id again, in another pack
            else:
                ids.append(rng.randbytes(32))
        ids = list(dict.fromkeys(ids))  # a pack holds an id once
        stored.extend(ids)
        for blob_id in ids:
            counts[blob_id[:8]] = counts.get(blob_id[:8], 0) + 1
        index.add_pack(_pack_id(p), records(_blobs(ids, p)))
    expected = sorted(int.from_bytes(k, "big") for k, n in counts.items() if n >= 2)
    assert index.shared_keys().tolist() == expected


@pytest.mark.parametrize("gone_first", [True, False])
def test_a_copy_in_a_pack_on_disk_is_preferred_to_one_in_a_lost_pack_in_any_run(small_runs, gone_first):
    ids = _random_ids(60, 40)
    lost, kept = _blobs(ids, 1), _blobs(ids, 2)
    filler = _blobs(_random_ids(300, 41), 3)
    index = Index()
    first, second = ((_pack_id(1), lost, True), (_pack_id(2), kept, False))[:: 1 if gone_first else -1]
    # The first run is too large to merge with the second: the two copies sit in different runs.
    index.stage(first[0], records(first[1]), gone=first[2])
    index.stage(_pack_id(3), records(filler))
    index.freeze()
    index.stage(second[0], records(second[1]), gone=second[2])
    index.freeze()
    assert len(index._runs) == 2

    assert index.locate_many(ids) == [_location(_pack_id(2), b) for b in kept]
    assert index.lookup(ids[5]) == _location(_pack_id(2), kept[5])
    _, packs, _ = index.columns(ids)
    assert set(packs.tolist()) == {index.pack_ids.index(_pack_id(2))}


def test_a_blob_only_in_a_lost_pack_is_not_stored_yet_its_place_is_still_known():
    lost_ids, kept_ids, both = _random_ids(30, 60), _random_ids(30, 61), _random_ids(10, 62)
    lost, kept = _blobs(lost_ids + both, 1), _blobs(kept_ids + both, 2)
    index = Index()
    index.stage(_pack_id(1), records(lost), gone=True)
    index.stage(_pack_id(2), records(kept))
    index.freeze()

    assert index.gone_packs == 1
    # A backup asks `contains`: the lost copy does not count, so the blob is stored again.
    assert index.contains_many(lost_ids) == [False] * 30
    assert not index.contains(lost_ids[0])
    assert index.contains_many(kept_ids + both) == [True] * 40
    assert index.contains(both[0])
    # A restore or verify asks where: the lost copy is named, so its read says the pack is missing.
    assert index.lookup(lost_ids[3]) == _location(_pack_id(1), lost[3])
    assert index.locate_many(both) == [_location(_pack_id(2), b) for b in kept[30:]]
    # Stored again by this run: found at once, in the new pack.
    index.add_pack(_pack_id(3), records(_blobs(lost_ids[:5], 3)))
    assert index.contains_many(lost_ids[:6]) == [True] * 5 + [False]


def test_runs_beyond_the_memory_budget_live_in_files(small_runs):
    index = Index()
    for p in range(12):
        index.add_pack(_pack_id(p), records(_blobs(_random_ids(40, 50 + p), p)))
    index.freeze()
    assert sum(run.n for run in index._runs) == 480
    in_memory = sum(run.n for run in index._runs if run.recs is not None)
    assert in_memory <= small_runs
    for run in index._runs:
        assert (run.recs is None) == (run.file is not None)
        assert len(run.sparse) == -(-run.n // run.every) <= index_module.MAX_SPARSE_KEYS
        if run.file is not None:  # a run in memory is searched whole and has no filter
            assert run.bloom is not None
            assert len(run.bloom.bits) * 8 <= index_module.MAX_BLOOM_BITS
        else:
            assert run.bloom is None
    if small_runs == 0:
        assert all(run.file is not None for run in index._runs)


def test_staged_index_files_become_runs_as_they_load(small_runs):
    index = Index()
    for p in range(6):
        index.stage(_pack_id(p), records(_blobs(_random_ids(30, 60 + p), p)))
        assert index._staged_count < index_module.MERGE_AT
    assert len(index) == 180 - index._staged_count
    index.freeze()
    assert len(index) == 180


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB file system, for the full-disk case."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # a run file may still be open


def test_a_full_disk_under_the_index_files_says_where_and_what_to_do_and_loses_nothing(
    monkeypatch, tiny_disk
):
    monkeypatch.setattr(index_module, "spill_dir", str(tiny_disk))
    monkeypatch.setattr(index_module, "MEMORY_RECORDS", 0)
    monkeypatch.setattr(index_module, "MERGE_AT", 1000)
    index = Index()
    added: dict[bytes, BlobLocation] = {}
    with pytest.raises(DiskFull) as caught:
        for p in range(200):  # 200,000 records of 54 bytes: far more than 256 KiB
            blobs = _blobs(_random_ids(1000, 500 + p), p)
            added.update((b.blob_id, _location(_pack_id(p), b)) for b in blobs)
            index.add_pack(_pack_id(p), records(blobs))
    message = str(caught.value)
    assert str(tiny_disk) in message and "TMPDIR" in message and "free some space" in message
    # Everything added is still found: what did not fit in a file is still staged in memory.
    sample = random.Random(1).sample(list(added), 2000)
    assert index.locate_many(sample) == [added[b] for b in sample]
