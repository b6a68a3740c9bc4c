"""The set of blob ids a prune keeps: exact for every 32-byte id, its memory following the distinct
ids however often snapshots name them again."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.adapters.repository import usage
from capsule.adapters.repository.usage import IdSet, PrefixSet, UsageWalker


def test_ids_added_again_and_again_are_kept_once_and_found_exactly(monkeypatch) -> None:
    monkeypatch.setattr(usage, "COMPACT_AT", 64)  # compact often, as a month of snapshots does
    rng = random.Random(3)
    prefix = rng.randbytes(30)
    # Ids that differ only in their last bytes, zeros among them: numpy strips trailing NULs
    # when it compares strings of different lengths, never two 32-byte ids.
    tricky = [prefix + bytes([0, 0]), prefix + bytes([1, 0]), prefix + bytes([0, 1]), prefix + bytes([1, 1])]
    distinct = tricky + [rng.randbytes(32) for _ in range(500)]
    ids = IdSet()
    seen: set[bytes] = set()
    for _ in range(6):  # each "snapshot" names most ids again, in another order
        names = rng.sample(distinct, 400) + tricky
        ids.add(b"".join(names))
        seen.update(names)
    raw = ids.tobytes()
    kept = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    assert kept == sorted(seen), "not exactly the ids added, sorted and each once"
    found = ids.contains(b"".join(distinct)).tolist()
    assert [i in seen for i in distinct] == found
    assert ids.contains(prefix + bytes([2, 0])).tolist() == [False]


def test_ids_are_found_exactly_whether_or_not_two_share_their_first_eight_bytes(monkeypatch) -> None:
    monkeypatch.setattr(usage, "COMPACT_AT", 50)
    rng = random.Random(5)
    plain = [rng.randbytes(32) for _ in range(300)]
    absent = [rng.randbytes(32) for _ in range(50)] + [p[:8] + rng.randbytes(24) for p in plain[:20]]
    for distinct in (plain, [*plain, plain[0][:8] + bytes(24), plain[1][:31] + b"\x00"]):
        ids = IdSet()
        for _ in range(4):
            ids.add(b"".join(rng.sample(distinct, 200)))
        ids.add(b"".join(distinct))
        raw = ids.tobytes()
        assert [raw[i : i + 32] for i in range(0, len(raw), 32)] == sorted(set(distinct))
        query = distinct + absent
        assert ids.contains(b"".join(query)).tolist() == [q in set(distinct) for q in query]
        found, at = ids.find(ids.freeze()[::-1])
        assert found.all() and (at[::-1] == range(len(at))).all()


def test_the_prefix_set_finds_every_id_added_and_any_id_sharing_its_first_eight_bytes(monkeypatch) -> None:
    monkeypatch.setattr(usage, "COMPACT_AT", 40)  # merged many times, as a long walk is
    rng = random.Random(11)
    added = [rng.randbytes(32) for _ in range(300)]
    prefixes = PrefixSet()
    for at in range(0, 900, 30):  # every id added three times over, in pieces
        prefixes.add(b"".join(added[at % 300 : at % 300 + 30]))
    assert len(prefixes) == 300
    assert prefixes.freeze().tolist() == sorted({int.from_bytes(a[:8], "big") for a in added})
    assert prefixes.contains(b"".join(added)).all(), "an id added was answered absent"
    twins = [a[:8] + rng.randbytes(24) for a in added[:10]]
    strangers = [rng.randbytes(32) for _ in range(50)]
    assert prefixes.contains(b"".join(twins)).all(), "a shared prefix must answer present (kept)"
    assert not prefixes.contains(b"".join(strangers)).any()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 12)), min_size=1, max_size=30
    ),
    exact=st.booleans(),
)
def test_a_walk_adding_only_what_differs_at_a_place_keeps_the_set_every_id_gives(seed, steps, exact) -> None:
    """Lists read at places (a file, a list's place in it) in any order: some as long as the list
    read before at their place, some ids changed, some repeated in other places; ids that share
    a prefix among them. The set is what adding every id of every list gives."""
    rng = random.Random(seed)
    twin = rng.randbytes(8)
    walker = UsageWalker(None, IdSet() if exact else PrefixSet())  # type: ignore[arg-type]
    whole = IdSet() if exact else PrefixSet()
    last: dict[tuple[str, int], list[bytes]] = {}
    pool = [rng.randbytes(32) for _ in range(20)] + [twin + rng.randbytes(24) for _ in range(5)]
    for file, place, length in steps:
        key = (f"file-{file}", place)
        before = last.get(key)
        if before is not None and rng.random() < 0.7:
            ids = [rng.choice(pool) if rng.random() < 0.2 else i for i in before]  # some changed
        else:
            ids = [rng.choice(pool) if rng.random() < 0.5 else rng.randbytes(32) for _ in range(length)]
        last[key] = ids
        body = b"".join(ids)
        walker._add_list(key, body)
        whole.add(body)
    assert walker.used.freeze().tolist() == whole.freeze().tolist()
