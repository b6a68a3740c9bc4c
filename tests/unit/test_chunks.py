"""The chunk store: ids come back in input order, and the same bytes are stored once."""

from __future__ import annotations

import random

import pytest

from capsule.adapters.errors import BlobNotFound, IntegrityError
from capsule.adapters.repository import repo as repo_module
from capsule.adapters.repository.chunks import (
    DIRECT_LIMIT,
    LIST_FANOUT,
    ChunkStore,
    IdLists,
    entry_blob_fields,
    load_id_lists,
)
from tests.unit.support import new_repository, reopen


def _chunks(n: int, seed: int, size: int = 4096) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def test_ids_come_back_in_input_order_across_batches(tmp_path):
    repo, key_file = new_repository(tmp_path, pack_size=64 * 1024)
    batches = [_chunks(7, seed) for seed in range(12)]
    with ChunkStore(repo) as store:
        ids = list(store.store_batches(batches))
    repo.flush()
    flat = [c for b in batches for c in b]
    assert ids == [repo.sealer.blob_id(c) for c in flat]
    assert store.stats.blobs == len(flat)
    assert store.stats.bytes == sum(len(c) for c in flat)
    fresh = reopen(repo, key_file)
    fresh.load_index()
    assert [fresh.read_blob(i) for i in ids] == flat


def test_chunks_already_stored_are_not_stored_again(tmp_path):
    repo, _ = new_repository(tmp_path)
    chunks = _chunks(20, 1)
    with ChunkStore(repo) as store:
        list(store.store_batches([chunks]))
    repo.flush()
    packs_before = set(repo.backend.list("data"))
    with ChunkStore(repo) as again:
        list(again.store_batches([chunks[:10], chunks[10:]]))
    repo.flush()
    assert again.stats.new_blobs == 0
    assert set(repo.backend.list("data")) == packs_before


def test_repeated_chunk_within_one_pack_is_stored_once(tmp_path):
    repo, _ = new_repository(tmp_path)
    x, y = _chunks(2, 2)
    with ChunkStore(repo) as store:
        list(store.store_batches([[x, y, x, x], [y, x]]))
    repo.flush()
    assert store.stats.new_blobs == 2
    assert store.stats.new_bytes == len(x) + len(y)


def test_repeated_chunk_is_stored_once_even_when_a_pack_fills_in_between(tmp_path):
    repo, _ = new_repository(tmp_path, pack_size=4096)  # every blob fills a pack
    x, y = _chunks(2, 3)
    with ChunkStore(repo) as store:
        list(store.store_batches([[x, y, x, x]]))
    repo.flush()
    assert store.stats.new_blobs == 2
    assert len(list(repo.backend.list("data"))) == 2


def test_few_ids_are_listed_directly_and_many_through_list_blobs(tmp_path):
    repo, key_file = new_repository(tmp_path)
    few = [repo.sealer.blob_id(bytes([i])) for i in range(DIRECT_LIMIT)]
    fields = entry_blob_fields(repo, b"".join(few))
    assert fields == {"blobs": [i.hex() for i in few], "blob_lists": []}

    many = [repo.sealer.blob_id(i.to_bytes(4, "big")) for i in range(LIST_FANOUT * 2 + 5)]
    fields = entry_blob_fields(repo, b"".join(many))
    repo.flush()
    assert fields["blobs"] == []
    assert len(fields["blob_lists"]) == 3
    fresh = reopen(repo, key_file)
    fresh.load_index()
    assert load_id_lists(fresh, fields["blob_lists"]) == many


def _id_lists(repo, ids: list[bytes], head: int) -> dict[str, list[str]]:
    """IdLists fed the first `head` ids last, in uneven pieces, as a store that copies ahead does."""
    out = IdLists(repo, direct=len(ids) <= DIRECT_LIMIT, has_blob=None, head=head)
    rest = ids[head:]
    rng = random.Random(len(ids) * 1000 + head)
    while rest:
        n = rng.randint(1, 300)
        out.extend(rest[:n])
        rest = rest[n:]
    return out.finish(ids[:head])


def test_ids_of_the_first_block_may_come_last_and_the_lists_are_the_same(tmp_path):
    repo, _ = new_repository(tmp_path)
    rng = random.Random(5)
    for n, head in [(0, 0), (10, 10), (40, 5), (300, 1), (256, 256), (700, 128), (513, 256), (1500, 200)]:
        ids = [rng.randbytes(32) for _ in range(n)]
        expected = _id_lists(repo, ids, 0)
        got = _id_lists(repo, ids, head)
        assert got == expected, (n, head)
        if n > DIRECT_LIMIT:
            assert got["blob_lists"] and not got["blobs"]
            repo.flush()
            assert load_id_lists(repo, got["blob_lists"]) == ids


def test_the_first_ids_must_all_arrive(tmp_path):
    repo, _ = new_repository(tmp_path)
    out = IdLists(repo, direct=False, has_blob=None, head=3)
    out.extend([bytes(32)] * 10)
    with pytest.raises(ValueError, match="expected 3 leading ids"):
        out.finish([bytes(32)])


def test_list_blobs_spread_over_packs_are_looked_up_and_read_together(tmp_path):
    repo, key_file = new_repository(tmp_path, pack_size=16 * 1024)  # about two lists a pack
    many = [repo.sealer.blob_id(i.to_bytes(4, "big")) for i in range(LIST_FANOUT * 9 + 1)]
    fields = entry_blob_fields(repo, b"".join(many))
    data = _chunks(1, 9)[0]
    with ChunkStore(repo) as store:
        (data_id,) = store.store_batches([[data]])
    repo.flush()
    fresh = reopen(repo, key_file)
    fresh.load_index()
    lists = fields["blob_lists"]
    assert len({fresh.index.lookup(bytes.fromhex(i)).pack_id for i in lists}) > 3
    assert load_id_lists(fresh, lists) == many
    per_list = [many[at : at + LIST_FANOUT] for at in range(0, len(many), LIST_FANOUT)]
    assert load_id_lists(fresh, lists[::-1]) == [i for ids in reversed(per_list) for i in ids]

    with pytest.raises(IntegrityError, match="named as a list but holds data"):
        load_id_lists(fresh, [*lists[:2], data_id.hex()])
    unknown = repo.sealer.blob_id(b"never stored").hex()
    with pytest.raises(BlobNotFound, match=unknown[:12]):
        load_id_lists(fresh, [lists[0], unknown])


def test_blobs_read_in_runs_are_each_authenticated_whatever_the_run_limit(tmp_path, monkeypatch):
    repo, key_file = new_repository(tmp_path, pack_size=64 * 1024)
    chunks = _chunks(40, 10)
    with ChunkStore(repo) as store:
        ids = list(store.store_batches([chunks]))
    repo.flush()
    fresh = reopen(repo, key_file)
    fresh.load_index()
    items = [(i, fresh.index.lookup(i)) for i in ids]
    shuffled = items[:]
    random.Random(4).shuffle(shuffled)
    reads: list[int] = []
    real_read = fresh.backend.read
    monkeypatch.setattr(fresh.backend, "read", lambda *a: reads.append(a[-1]) or real_read(*a))
    largest = max(loc.length for _, loc in items)
    packs = len({loc.pack_id for _, loc in items})
    # Below one blob's size, every blob is read alone; at three blobs' size, three at a time at
    # most; with no limit, once per pack.
    for limit, expected in ((1, len(items)), (3 * largest, None), (1 << 30, packs)):
        monkeypatch.setattr(repo_module, "RUN_LIMIT", limit)
        reads.clear()
        assert fresh.read_blobs(items) == chunks
        if expected is not None:
            assert len(reads) == expected
        else:
            assert packs < len(reads) < len(items)
            assert max(reads) <= limit
        assert fresh.read_blobs(shuffled) == [chunks[ids.index(i)] for i, _ in shuffled]

    # One flipped byte in the middle of a run fails that blob, named.
    victim_id, victim = items[len(items) // 2]
    path = fresh.backend.path_of("data", victim.pack_id)
    raw = bytearray(path.read_bytes())
    raw[victim.offset + victim.length // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=victim_id.hex()[:12]):
        fresh.read_blobs(items)
    path.unlink()
    with pytest.raises(BlobNotFound, match=f"pack {victim.pack_id[:12]} is missing"):
        fresh.read_blobs(items)
