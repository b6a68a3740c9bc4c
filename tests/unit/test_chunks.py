"""The chunk store: ids come back in input order, and the same bytes are stored once."""

from __future__ import annotations

import random

import pytest

from adapters.chunks import (
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
