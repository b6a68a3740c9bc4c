"""Prune's repack and plan on a real repository of database snapshots (pages in bundles): each pack
is read once, every unit copied is authenticated first, and the plan's per-pack figures match a
count made blob by blob."""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zstandard

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository import prune as prune_engine
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.adapters.repository.backends.storage import ALL_KINDS, Kind, OpenObject, local_paths
from capsule.adapters.repository.blobcodec import encode_bundle
from capsule.adapters.repository.pack import BLOB_DATA, HEADER_ENTRY, PackBuilder
from capsule.adapters.repository.prune import plan_prune, repack
from capsule.adapters.repository.repacker import Repacker, open_pack
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.usage import ID_DTYPE
from tests.integration.helpers import flip_byte
from tests.integration.prune_lab import Lab, prune, roundtrip_plan


class CountingBackend(LocalBackend):
    """The local backend, counting the data reads: which pack, and whether a range or its tail."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[tuple[str, str]] = Counter()
        self.ranges: list[tuple[str, int, int]] = []

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = super().read(kind, name, offset, length)
        self.reads["all", kind] += 1
        if kind == "data":
            self.reads["read", name] += 1
            self.ranges.append((name, offset, len(data)))
        return data

    def read_tail(self, kind: Kind, name: str, length: int) -> tuple[int, bytes]:
        if kind == "data":
            self.reads["tail", name] += 1
        return super().read_tail(kind, name, length)

    @contextlib.contextmanager
    def open_file(self, kind: Kind, name: str) -> Iterator[OpenObject]:
        """The file opened once, its reads counted as the plain ones are."""
        with super().open_file(kind, name) as opened:
            yield _Counted(self, opened, name) if kind == "data" else opened


class _Counted:
    def __init__(self, backend: CountingBackend, opened: OpenObject, name: str) -> None:
        self.backend, self.opened, self.name = backend, opened, name
        self.size = opened.size

    def tail(self, length: int) -> bytes:
        self.backend.reads["tail", self.name] += 1
        return self.opened.tail(length)

    def read(self, offset: int, length: int) -> bytes:
        data = self.opened.read(offset, length)
        self.backend.reads["read", self.name] += 1
        self.backend.ranges.append((self.name, offset, len(data)))
        return data


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """Eight database snapshots, each changing many pages; the first five forgotten."""
    lab = Lab(tmp_path / "lab")
    made = []
    for round_ in range(8):
        lab.sell(120, delete_below=60 * round_ + 1)
        made.append(lab.backup_database())
    for sid in made[:5]:
        lab.forget(sid)
    lab.age()
    return lab


def test_the_repack_reads_each_packs_header_once_then_only_the_units_it_copies(
    lab: Lab, tmp_path: Path
) -> None:
    plan = plan_prune(lab.open(), keep_used=True)  # the repack walks no snapshot: it reads packs only
    assert plan.repack and plan.delete
    backend = CountingBackend(lab.repository)
    repo = Repository.open(backend, lab.key)
    sizes = {name: backend.size("data", name) for name in plan.repack}

    done = repack(repo, roundtrip_plan(plan))

    assert done.blobs > 0
    tails = Counter(name for (how, name), n in backend.reads.items() if how == "tail" for _ in range(n))
    assert set(tails) <= set(plan.repack), "a pack holding nothing needed was read"
    assert set(tails.values()) == {1}, "a header was read twice"
    assert {name for name, _, _ in backend.ranges} <= set(tails), "units were read before their header"
    # No byte is read twice, and every byte read is copied: the new packs' blobs are those bytes.
    for name in tails:
        spans = sorted((a, a + n) for pack, a, n in backend.ranges if pack == name)
        assert all(stop <= start for (_, stop), (start, _) in itertools.pairwise(spans))
    read = sum(n for _, _, n in backend.ranges)
    copied = sum(int(open_pack(repo, backend.read("data", p), p)[1]["length"].sum()) for p in done.packs)
    assert read == copied
    assert read < sum(sizes[name] for name in tails), "the condemned packs' unused units were read"
    _, result = prune(lab, plan=plan, repacked=done)
    assert set(result.deleted) == set(plan.condemned)
    lab.check(tmp_path / "out")


def _bundle_pack(
    repo: Repository, ids: list[bytes], pages: list[bytes], *, flip_at: int | None = None
) -> str:
    """A pack of one bundle of `pages` whose header names them `ids`; with `flip_at`, one byte of
    the sealed bundle inverted (the header and the pack's name still right)."""
    compression, sealed = encode_bundle(repo.sealer, zstandard.ZstdCompressor(), BLOB_DATA, b"".join(pages))
    if flip_at is not None:
        sealed = sealed[:flip_at] + bytes([sealed[flip_at] ^ 0xFF]) + sealed[flip_at + 1 :]
    builder = PackBuilder()
    header = b"".join(
        HEADER_ENTRY.pack(BLOB_DATA, compression, len(sealed) if k == 0 else 0, len(page), blob_id)
        for k, (blob_id, page) in enumerate(zip(ids, pages, strict=True))
    )
    builder.add_run(header, memoryview(sealed))
    pack_id, data = builder.finish(repo.sealer)
    repo.backend.write("data", pack_id, data)
    return pack_id


def _sorted_ids(*ids: bytes) -> np.ndarray:  # type: ignore[type-arg]
    return np.array(sorted(ids), dtype=ID_DTYPE)


def test_a_damaged_bundle_is_never_copied_and_the_error_names_the_page_wanted(lab: Lab) -> None:
    repo = lab.open()
    pages = [bytes([n]) * 4096 for n in range(3)]
    ids = [repo.sealer.blob_id(p) for p in pages]
    pack_id = _bundle_pack(repo, ids, pages, flip_at=30)
    copier = Repacker(repo, lambda _: None)

    with pytest.raises(IntegrityError, match=f"blob {ids[1].hex()[:12]} in pack {pack_id[:12]} failed auth"):
        copier.open_source(pack_id, _sorted_ids(ids[1]))
    assert not len(copier.builder) and not copier.written


def test_a_misnamed_member_is_copied_byte_for_byte_and_a_reader_still_refuses_it(lab: Lab) -> None:
    # The copier owes the tag alone (format section 14.2): the unit moves unchanged under its
    # authenticated header entries, so the id check every reader makes still catches the writer's
    # fault in the copy, as it did in the original.
    repo = lab.open()
    pages = [bytes([n]) * 4096 for n in range(3)]
    right = [repo.sealer.blob_id(p) for p in pages]
    wrong = repo.sealer.blob_id(b"another page")
    pack_id = _bundle_pack(repo, [right[0], wrong, right[2]], pages)
    copier = Repacker(repo, lambda _: None)

    assert copier.copy_from(pack_id, _sorted_ids(wrong)) == 1
    result = copier.finish()

    (new_pack,) = result.packs
    old, new = repo.backend.read("data", pack_id), repo.backend.read("data", new_pack)
    assert len(new) == len(old) and new != old  # the same bundle, under a header sealed anew
    repo.load_index(use_cache=False)
    loc = repo.index.locate_many([wrong])[0]
    assert loc is not None and loc.pack_id == new_pack
    with pytest.raises(IntegrityError, match=f"blob {wrong.hex()[:12]}.*does not match"):
        repo.read_blob(wrong, loc)


def test_the_plans_figures_match_a_count_made_blob_by_blob(lab: Lab) -> None:
    repo = lab.open()
    plan = plan_prune(repo, repack_unused_percent=10)
    used = prune_engine._used_ids(repo, plan.snapshots)
    used_bytes = unused_bytes = 0
    expected_repack = []
    for pack_id, items in repo.index.by_pack():
        units: dict[int, int] = {}
        used_units: set[int] = set()
        for blob_id, loc in items:
            units[loc.offset] = loc.length
            if used.contains(blob_id).all() and repo.index.lookup(blob_id).pack_id == pack_id:  # type: ignore[union-attr]
                used_units.add(loc.offset)
        here = sum(units[o] for o in used_units)
        used_bytes += here
        unused_bytes += sum(units.values()) - here
        if here > 0 and (sum(units.values()) - here) * 10 > sum(units.values()):
            expected_repack.append(pack_id)
    assert (plan.totals.used_bytes, plan.totals.unused_bytes) == (used_bytes, unused_bytes)
    assert plan.repack == tuple(sorted(expected_repack))


def test_the_repack_reuses_the_used_blobs_of_its_own_plan_and_walks_again_for_another(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_prune(lab.open(), keep_used=True)
    walks: list[int] = []
    walk = prune_engine._used_prefixes

    def counted(repo: Repository, names: list[str] | tuple[str, ...]) -> prune_engine.PrefixSet:
        walks.append(len(names))
        return walk(repo, names)

    monkeypatch.setattr(prune_engine, "_used_prefixes", counted)
    first = repack(lab.open(), roundtrip_plan(plan))
    assert walks == [] and first.blobs > 0
    repack(lab.open(), plan)  # as a retried step in a new process: nothing kept
    assert walks == [len(plan.snapshots)]
    other = plan_prune(lab.open(), keep_used=True)
    repack(lab.open(), plan)  # the set kept is another plan's
    assert walks == [len(plan.snapshots)] * 3  # the retry, the other plan, this repack
    assert other.created != plan.created


def test_a_damaged_list_blob_stops_the_plan_naming_it(lab: Lab) -> None:
    repo = lab.open()
    repo.load_index(use_cache=False)
    name = sorted(repo.backend.list("snapshots"))[-1]
    lists = repo.load_snapshot(name).entries[0].blob_lists
    assert lists, "the lab's database is too small to be listed through list blobs"
    damaged = bytes.fromhex(lists[-1])
    loc = repo.index.lookup(damaged)
    assert loc is not None
    flip_byte(next(p for p in lab.pack_files() if p.name == loc.pack_id), loc.offset + loc.length // 2)

    with pytest.raises(IntegrityError, match=f"cannot prune: snapshot {name[:12]}") as raised:
        plan_prune(lab.open())

    assert damaged.hex()[:12] in str(raised.value)


def _new_blobs(repo: Repository, packs: tuple[str, ...]) -> set[bytes]:
    return {bytes(r["id"]) for p in packs for r in open_pack(repo, repo.backend.read("data", p), p)[1]}


def test_a_read_budget_smaller_than_any_pack_copies_the_same_blobs_one_pack_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab = Lab(tmp_path / "lab", pack_size=32 * 1024)  # small packs: many to repack, read in turn
    made = []
    for round_ in range(8):
        lab.sell(120, delete_below=60 * round_ + 1)
        made.append(lab.backup_database())
    for sid in made[:5]:
        lab.forget(sid)
    lab.age()
    plan = plan_prune(lab.open(), keep_used=True)
    assert len(plan.repack) >= 2
    monkeypatch.setattr(prune_engine, "REPACK_AHEAD_BYTES", 1)  # each pack read alone, in turn

    repo = lab.open()
    done = repack(repo, roundtrip_plan(plan))

    assert done.blobs > 0
    assert len(_new_blobs(repo, done.packs)) == done.blobs
    _, result = prune(lab, plan=plan, repacked=done)
    assert set(result.deleted) == set(plan.condemned)
    lab.check(tmp_path / "out")


def test_a_damaged_unit_stops_a_repack_with_a_tiny_read_budget_instead_of_holding_it_up(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plan = plan_prune(lab.open(), keep_used=True)
    monkeypatch.setattr(prune_engine, "REPACK_AHEAD_BYTES", 1)
    monkeypatch.setattr(prune_engine, "REPACK_AHEAD", 8)
    shutil.copytree(lab.repository, tmp_path / "copy")
    counting = CountingBackend(tmp_path / "copy")
    repack(Repository.open(counting, lab.key), roundtrip_plan(plan))  # which units are copied
    first, offset, _ = counting.ranges[0]
    flip_byte(lab.repository / "data" / first[:2] / first, offset + 20)  # in a unit to be copied

    with pytest.raises(IntegrityError, match=f"in pack {first[:12]}"):
        repack(lab.open(), roundtrip_plan(plan))


def test_a_backend_of_no_local_files_is_read_whole_and_copies_the_same_blobs(lab: Lab) -> None:
    plan = plan_prune(lab.open(), keep_used=True)
    memory = MemoryBackend()
    local = LocalBackend(lab.repository)
    memory.write("config", "config", local.read("config", "config"))
    for kind in ALL_KINDS - {"config"}:
        for name in local.list(kind):  # type: ignore[arg-type]
            memory.write(kind, name, local.read(kind, name))  # type: ignore[arg-type]
    assert local_paths(memory) is None

    in_memory = Repository.open(memory, lab.key)
    on_disk = lab.open()
    from_memory = repack(in_memory, roundtrip_plan(plan))
    from_disk = repack(on_disk, roundtrip_plan(plan))

    assert from_memory.blobs == from_disk.blobs > 0
    assert _new_blobs(in_memory, from_memory.packs) == _new_blobs(on_disk, from_disk.packs)


def test_the_repack_reuses_the_plans_index_only_while_the_index_files_and_packs_are_those_it_was_made_from(
    lab: Lab, tmp_path: Path
) -> None:
    backend = CountingBackend(lab.repository)
    plan = roundtrip_plan(plan_prune(Repository.open(backend, lab.key), keep_used=True))
    read = backend.reads["all", "index"]
    repack(Repository.open(backend, lab.key), plan)
    assert backend.reads["all", "index"] == read, "the repack read the index files the plan had read"

    plan = roundtrip_plan(plan_prune(Repository.open(backend, lab.key), keep_used=True))
    lab.sell(40)
    lab.backup_database()  # a backup adds packs and an index file before the repack
    read = backend.reads["all", "index"]
    done = repack(Repository.open(backend, lab.key), plan)
    assert backend.reads["all", "index"] > read, "the index changed: it must be loaded again"
    _, result = prune(lab, plan=plan, repacked=done)
    assert set(result.deleted) <= set(plan.condemned)
    lab.check(tmp_path / "out")
