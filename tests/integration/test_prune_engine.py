"""The prune engine: forgotten snapshots' blobs are reclaimed, kept snapshots stay whole.

Real repositories on disk, real backups of a folder and a SQLite database, each phase run on a
repository opened afresh (see prune_lab.py). What a kill does is in test_prune_engine_kills.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.index import Index, encode_index, records
from capsule.adapters.repository.pack import BLOB_LIST, PackBuilder
from capsule.adapters.repository.prune import (
    KEEP_YOUNGER_THAN,
    PrunePlan,
    finish_prune,
    plan_prune,
    repack,
    rewrite_index,
)
from capsule.adapters.repository.rebuild import ADOPT_WITHIN, adopt_unindexed_packs, read_pack_header
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import InvalidCommand
from tests.integration.helpers import flip_byte
from tests.integration.prune_lab import KiB, Lab, prune, roundtrip_plan


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "lab")


def _history(lab: Lab) -> list[str]:
    """Six snapshots, files and database in turn, each changing much of what the last held."""
    made = []
    for round_ in range(3):
        for i in range(4):
            lab.write(f"photos/round{round_}-{i}.jpg", 60 * KiB)
        if round_:
            for i in range(4):
                lab.remove(f"photos/round{round_ - 1}-{i}.jpg")
        if round_ == 0:
            lab.write("static/logo.png", 20 * KiB)
        made.append(lab.backup_files())
        lab.sell(300, delete_below=300 * round_ + 1)
        made.append(lab.backup_database())
    return made


def test_forgetting_then_pruning_reclaims_space_and_kept_snapshots_restore(lab: Lab, tmp_path: Path) -> None:
    made = _history(lab)
    for sid in made[:4]:
        lab.forget(sid)
    lab.age()
    before = lab.pack_bytes()

    plan, result = prune(lab)

    assert plan.delete and set(result.deleted) >= set(plan.delete)
    assert not result.rescued
    after = lab.pack_bytes()
    assert after < before * 0.6, (before, after)
    assert result.freed_bytes >= before - after
    assert not (set(plan.condemned) & lab.packs())
    lab.check(tmp_path / "out")
    lab.age()
    again = plan_prune(lab.open())
    assert (again.delete, again.repack) == ((), ()), "the first prune left garbage"


def test_nothing_forgotten_nothing_deleted(lab: Lab, tmp_path: Path) -> None:
    _history(lab)
    lab.age()
    packs = lab.packs()
    plan = plan_prune(lab.open())
    assert (plan.delete, plan.repack) == ((), ())
    assert plan.totals.unused_bytes == 0 and plan.totals.used_bytes > 0
    prune(lab)
    assert lab.packs() == packs
    lab.check(tmp_path / "out")


def _half_used_pack(lab: Lab) -> tuple[str, str]:
    """A pack 70% of whose bytes a forgotten snapshot alone used; returns (that pack, kept snapshot)."""
    lab.write("keep.bin", 30 * KiB)
    lab.write("drop.bin", 70 * KiB)
    first = lab.backup_files()
    (pack,) = lab.data_packs()
    lab.remove("drop.bin")
    kept = lab.backup_files()
    lab.forget(first)
    lab.age()
    return pack, kept


def test_a_pack_is_repacked_only_when_its_unused_share_passes_the_threshold(lab: Lab, tmp_path: Path) -> None:
    pack, _ = _half_used_pack(lab)
    high = plan_prune(lab.open(), repack_unused_percent=80)
    assert pack not in high.condemned
    low = plan_prune(lab.open(), repack_unused_percent=50)
    assert low.repack == (pack,)
    assert 60 * KiB < low.totals.unused_bytes < 80 * KiB
    before = lab.pack_bytes()
    lists = lab.packs() - lab.data_packs()

    _, result = prune(lab, percent=50)

    assert pack in result.deleted
    assert set(result.deleted) - {pack} <= lists, "only the forgotten snapshot's lists go besides"
    assert lab.pack_bytes() < before - 60 * KiB
    lab.check(tmp_path / "out")


def test_a_damaged_blob_stops_the_repack_and_nothing_is_deleted(lab: Lab) -> None:
    pack, _ = _half_used_pack(lab)
    path = next(p for p in lab.pack_files() if p.name == pack)
    kept_blob = next(
        b for b in read_pack_header(lab.open(), pack) if b.length > 20 * KiB and b.length < 40 * KiB
    )
    flip_byte(path, kept_blob.offset + 100)
    lab.age()
    packs = lab.packs()
    plan = plan_prune(lab.open(), repack_unused_percent=10)
    assert plan.repack == (pack,)

    with pytest.raises(IntegrityError, match=kept_blob.blob_id.hex()[:12]):
        repack(lab.open(), plan)

    assert lab.packs() == packs
    assert len(list((lab.repository / "index").iterdir())) == len(plan.index_files)


def test_a_blob_stored_twice_is_kept_once(lab: Lab, tmp_path: Path) -> None:
    lab.write("a.bin", 50 * KiB)
    lab.backup_files()
    # Two backups of two folders holding the same new file, that loaded the index before either
    # stored: both store it (the second ends long after the first, too late to adopt its pack).
    lab.write("b.bin", 80 * KiB)
    other = lab.root / "other"
    other.mkdir()
    (other / "b.bin").write_bytes((lab.uploads / "b.bin").read_bytes())
    first, second = lab.open(), lab.open()
    first.ensure_index()
    second.ensure_index()
    lab.backup_files(first)
    lab.age()
    lab.backup_files(second, other)
    lab.age()
    holding = [p for p in lab.data_packs() if len(read_pack_header(lab.open(), p)) >= 2]
    assert len(lab.data_packs()) == 3

    plan, _ = prune(lab)

    # The copy the index does not choose is unused: its pack goes (repacked: it holds a tree too).
    assert len(plan.condemned) == 1 and set(plan.condemned) <= set(holding)
    ids = [b.blob_id for p in lab.packs() for b in read_pack_header(lab.open(), p)]
    assert len(ids) == len(set(ids)), "a blob is still stored twice"
    lab.check(tmp_path / "out")


def _unindexed_pack(lab: Lab) -> str:
    """A pack no index names, as a backup killed before writing its index leaves."""
    repo = lab.open()
    builder = PackBuilder()
    blob = repo.prepare(0, b"left by a killed backup" * 100)
    builder.add(blob.blob_id, blob.blob_type, blob.compression, blob.sealed, blob.plain_length)
    pack_id, data = builder.finish(repo.sealer)
    repo.backend.write("data", pack_id, data)
    return pack_id


def test_an_unindexed_pack_is_left_while_young_and_collected_once_old(lab: Lab, tmp_path: Path) -> None:
    lab.write("a.bin", 10 * KiB)
    lab.backup_files()
    lab.age()
    orphan = _unindexed_pack(lab)

    young = plan_prune(lab.open())
    assert orphan not in young.condemned and young.totals.young_packs == 1

    lab.age()
    plan, result = prune(lab)
    assert plan.delete == (orphan,) and result.deleted == (orphan,)
    lab.check(tmp_path / "out")


def test_young_packs_are_never_condemned(lab: Lab) -> None:
    made = _history(lab)
    for sid in made[:4]:
        lab.forget(sid)
    plan = plan_prune(lab.open())
    assert (plan.delete, plan.repack) == ((), ())
    assert plan.totals.young_packs > 0


def test_the_index_cache_cannot_bring_back_a_deleted_pack(lab: Lab, tmp_path: Path) -> None:
    made = _history(lab)
    cache = tmp_path / "cache"
    cached = lab.open()
    cached.cache_dir = cache
    cached.load_index()  # the cache now holds every pack, the condemned ones included
    for sid in made[:4]:
        lab.forget(sid)
    lab.age()
    plan, result = prune(lab)
    assert result.deleted

    reader = lab.open()
    reader.cache_dir = cache
    reader.load_index()
    assert not set(plan.condemned) & set(reader.index.pack_ids)
    assert reader.index.gone_packs == 0
    for pack, recs in _packs_of(cached.index, set(result.deleted)):
        for blob_id in recs:
            loc = reader.index.lookup(blob_id)
            assert loc is None or loc.pack_id not in plan.condemned, pack


def _packs_of(index: Index, packs: set[str]) -> list[tuple[str, list[bytes]]]:
    return [(p, [i for i, _ in items]) for p, items in index.by_pack() if p in packs]


def test_an_unreadable_snapshot_stops_the_plan(lab: Lab) -> None:
    made = _history(lab)
    flip_byte(lab.repository / "snapshots" / made[0])
    with pytest.raises(IntegrityError, match="cannot prune: snapshot"):
        plan_prune(lab.open())


def test_a_backup_that_loaded_the_old_index_rescues_the_pack_it_builds_on(lab: Lab, tmp_path: Path) -> None:
    # A backup starts and loads the index; then the prune condemns the pack holding b.bin.
    backup, b_bytes = lab.one_file_only_a_forgotten_snapshot_held()
    plan = plan_prune(lab.open())
    (condemned,) = plan.repack  # the forgotten snapshot's data pack; its lists' pack is deleted
    assert set(plan.condemned) - {condemned} == set(plan.delete)
    repacked = repack(lab.open(), plan)
    rewrite_index(lab.open(), plan, repacked)
    fresh = lab.open()
    fresh.load_index(use_cache=False)
    assert condemned not in fresh.index.pack_ids

    # b.bin comes back; the running backup finds its blob in its old index and stores nothing.
    (lab.uploads / "b.bin").write_bytes(b_bytes)
    late = lab.backup_files(backup)
    known = {*plan.condemned, *repacked.packs} | set(fresh.index.pack_ids) | _packs_named(lab)
    assert not (lab.packs() - known)
    result = finish_prune(lab.open(), plan, repacked)

    assert result.rescued == (condemned,) and condemned not in result.deleted
    assert condemned in lab.packs()
    assert late in lab.expected
    lab.check(tmp_path / "out")


def _packs_named(lab: Lab) -> set[str]:
    repo = lab.open()
    repo.load_index(use_cache=False)
    return set(repo.index.pack_ids)


def test_the_orphan_area_is_tidied_of_old_temporary_files(lab: Lab) -> None:
    lab.write("a.bin", 10 * KiB)
    lab.backup_files()
    old = lab.repository / "data" / "ab" / ".tmp-0123456789abcdef"
    new = lab.repository / "index" / ".tmp-fedcba9876543210"
    old.write_bytes(b"half a pack")
    new.write_bytes(b"half an index")
    when = time.time() - 2 * 24 * 3600
    os.utime(old, (when, when))
    _, result = prune(lab)
    assert result.temporary_files_removed == 1
    assert not old.exists() and new.exists()
    assert LocalBackend(lab.repository).exists("config", "config")


def test_a_backup_adopts_a_young_unindexed_pack_but_never_an_old_one(lab: Lab) -> None:
    lab.write("a.bin", 10 * KiB)
    lab.backup_files()
    young = _unindexed_pack(lab)
    repo = lab.open()
    assert adopt_unindexed_packs(repo) == 1 and young in repo.index.pack_ids
    old = _unindexed_pack(lab)
    lab.age(ADOPT_WITHIN + 60)  # the pack a prune may have dropped from the index
    repo = lab.open()
    assert adopt_unindexed_packs(repo) == 0 and old not in repo.index.pack_ids
    assert KEEP_YOUNGER_THAN >= 2 * ADOPT_WITHIN


def test_a_plan_survives_json_and_a_bad_threshold_is_refused(lab: Lab) -> None:
    made = _history(lab)
    lab.forget(made[0])
    lab.age()
    plan = plan_prune(lab.open())
    assert plan.condemned
    assert roundtrip_plan(plan) == plan
    assert PrunePlan.from_json(json.dumps(plan.to_json())) == plan
    with pytest.raises(InvalidCommand, match="percentage from 0 to 100, not 150"):
        plan_prune(lab.open(), repack_unused_percent=150)


def test_forgetting_every_snapshot_leaves_no_pack(lab: Lab, tmp_path: Path) -> None:
    for sid in _history(lab):
        lab.forget(sid)
    lab.age()
    plan, result = prune(lab)
    assert plan.totals.used_blobs == 0 and not plan.repack
    assert set(result.deleted) == set(plan.delete) and lab.packs() == set()
    lab.check(tmp_path / "out")
    lab.write("after.bin", 10 * KiB)
    lab.backup_files()  # the emptied repository takes backups again
    lab.check(tmp_path / "out-after")


def _types_by_pack(lab: Lab) -> dict[str, set[int]]:
    repo = lab.open()
    return {pack: {b.blob_type for b in read_pack_header(repo, pack)} for pack in lab.packs()}


def test_a_forgotten_database_snapshots_lists_are_deleted_whole_and_its_pages_not_copied(
    lab: Lab, tmp_path: Path
) -> None:
    """A database backup writes its list blobs into packs of their own: once its snapshot is
    forgotten they are deleted whole, and its pages' pack, still used by the next snapshot, is not
    pushed past the repack threshold by them."""
    lab.sell(600)  # about 130 pages: more than an entry names directly, so the backup writes lists
    first = lab.backup_database()
    first_packs = lab.packs()
    lab.sell(3)  # a few pages change: the next snapshot still uses nearly all of the first's pages
    lab.backup_database()
    types = _types_by_pack(lab)
    assert all(len(held) == 1 for held in types.values()), types
    list_packs = {pack for pack in first_packs if types[pack] == {BLOB_LIST}}
    assert list_packs, "the first backup wrote no pack of lists"
    lab.forget(first)
    lab.age()

    plan, result = prune(lab)

    assert set(plan.delete) == list_packs, "the forgotten snapshot's lists go whole, nothing else"
    assert plan.repack == ()
    assert set(result.deleted) == list_packs
    lab.check(tmp_path / "out")


def test_a_condemned_pack_an_index_file_names_again_is_kept_unless_that_file_is_superseded(lab: Lab) -> None:
    """No snapshot was written since the plan, so the delete step reads which packs the index files
    name without building the index: a pack named again (a repair indexed it, or an earlier run
    rescued it) stays; one named only by a file another supersedes goes, as loading the index
    would leave it out."""
    made = _history(lab)
    for sid in made[:4]:
        lab.forget(sid)
    lab.age()
    plan = plan_prune(lab.open())
    kept_back, superseded_only = sorted(plan.delete)[:2]
    repacked = repack(lab.open(), plan)
    rewrite_index(lab.open(), plan, repacked)
    repo = lab.open()
    records_of = _pack_records(repo, {kept_back, superseded_only})
    repo.save_sealed("index", encode_index({kept_back: records_of[kept_back]}))
    stale = repo.save_sealed("index", encode_index({superseded_only: records_of[superseded_only]}))
    repo.save_sealed("index", encode_index({}, supersedes=[stale]))

    result = finish_prune(lab.open(), plan, repacked)

    assert kept_back not in result.deleted and kept_back in lab.packs()
    assert superseded_only in result.deleted and superseded_only not in lab.packs()
    assert set(result.deleted) == set(plan.condemned) - {kept_back}
    assert not result.rescued


def _pack_records(repo: Repository, packs: set[str]) -> dict[str, npt.NDArray[np.void]]:
    """The index records of `packs`, read from their own headers."""
    return {p: records(read_pack_header(repo, p)) for p in packs}
