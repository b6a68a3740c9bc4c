"""Damage in the repository is found, attributed to the snapshots it hurts, and never restored.

The shared repository holds snapshots A and B of the shop's database (same content, so they share
every blob) and snapshot C of another database, whose blobs sit in packs of their own. Packs are
small (1 MiB), so the database spreads over several of them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.verify import verify
from tests.integration.helpers import (
    DatabaseTemplates,
    MiB,
    Shop,
    copy_shop,
    file_content_digest,
    files_under,
    flip_byte,
    made_once,
    sha256_file,
)


@dataclass
class Layout:
    a: str
    b: str
    c: str
    ab_packs: list[str]  # packs holding the blobs of A and B (relative to the repository)
    c_packs: list[str]
    ab_index: str  # the index file naming the A/B packs
    other_db: str


@pytest.fixture(scope="session")
def pristine(shared_folder: Path, templates: DatabaseTemplates) -> tuple[Shop, Layout]:
    """Three snapshots in 1 MiB packs, made once for the run (the tests damage copies of it)."""

    def make(root: Path) -> None:
        shop = Shop(root / "shop")
        templates.copy(shop.database, size_mib=4)
        other = templates.copy(shop.database.with_name("other.db"), size_mib=2, seed=7)
        shop.init(env={"CAPSULE_PACK_SIZE": str(MiB)})
        a = shop.backup()["snapshot_id"]
        ab_index = [p.name for p in shop.index_files()]
        b = shop.backup()["snapshot_id"]
        ab_packs = [str(p.relative_to(shop.repository)) for p in shop.packs()]
        c = shop.backup(env={"CAPSULE_DATABASE": str(other)})["snapshot_id"]
        all_packs = [str(p.relative_to(shop.repository)) for p in shop.packs()]
        c_packs = [p for p in all_packs if p not in ab_packs]
        assert len(ab_packs) >= 2 and c_packs and len(ab_index) == 1
        layout = Layout(a, b, c, ab_packs, c_packs, ab_index[0], str(other))
        (root / "layout.json").write_text(json.dumps(dataclasses.asdict(layout)))

    root = made_once(shared_folder / "damage", make)
    return Shop(root / "shop"), Layout(**json.loads((root / "layout.json").read_text()))


@pytest.fixture
def damaged(pristine: tuple[Shop, Layout], tmp_path: Path) -> tuple[Shop, Layout]:
    """A fresh copy of the pristine shop for one test to damage."""
    shop, layout = pristine
    return copy_shop(shop, tmp_path / "shop"), layout


def largest(shop: Shop, relative: list[str]) -> Path:
    return max((shop.repository / r for r in relative), key=lambda p: (p.stat().st_size, p.name))


def test_verify_read_data_names_the_snapshots_and_file_behind_a_flipped_pack_byte(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    shop, layout = damaged
    pack = largest(shop, layout.ab_packs)
    flip_byte(pack)

    text = shop.run("verify", "--read-data", expect=3)
    report = shop.run("verify", "--read-data", "--json", expect=3)

    assert pack.name[:12] in text.stdout
    assert f"affects snapshot {layout.a[:12]}: pos.db" in text.stdout
    assert f"affects snapshot {layout.b[:12]}: pos.db" in text.stdout
    assert layout.c[:12] not in text.stdout
    problems = json.loads(report.stdout)["problems"]
    hit = {(a["snapshot_id"], a["path"]) for p in problems for a in p["affected"]}
    assert hit == {(layout.a, "pos.db"), (layout.b, "pos.db")}
    # C's blobs are elsewhere: it still restores.
    shop.restore(layout.c, tmp_path / "c")
    assert file_content_digest(tmp_path / "c" / "other.db", immutable=True) == file_content_digest(
        Path(layout.other_db)
    )


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "worker-processes"])
def test_verify_read_data_names_the_same_damage_whether_workers_or_this_process_check_the_packs(
    damaged: tuple[Shop, Layout], workers: int
) -> None:
    shop, layout = damaged
    pack = largest(shop, layout.ab_packs)
    flip_byte(pack)
    repo = Repository.open(LocalBackend(shop.repository), shop.key_file)

    report = verify(repo, read_data=True, workers=workers)

    about_pack = [p for p in report.problems if p.subject == f"pack {pack.name[:12]}"]
    assert any("does not match its name" in p.message for p in about_pack)
    assert {a for p in about_pack for a in p.affected} == {(layout.a, "pos.db"), (layout.b, "pos.db")}
    assert not [p for p in report.problems if p not in about_pack]
    assert report.bytes_read >= sum(p.stat().st_size for p in shop.packs())


def test_restore_from_a_damaged_pack_fails_and_writes_nothing_at_the_target(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    shop, layout = damaged
    flip_byte(largest(shop, layout.ab_packs))

    empty = tmp_path / "empty"
    proc = shop.restore(layout.a, empty, expect=None)
    assert proc.returncode in (1, 3)
    assert files_under(empty) == []

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "pos.db").write_bytes(b"yesterday's restore")
    forced = shop.restore(layout.a, existing, "--force", expect=None)
    assert forced.returncode in (1, 3)
    assert files_under(existing) == ["pos.db"]
    assert (existing / "pos.db").read_bytes() == b"yesterday's restore"


def test_in_place_restore_from_a_damaged_pack_leaves_the_live_database_alone(
    damaged: tuple[Shop, Layout],
) -> None:
    shop, layout = damaged
    flip_byte(largest(shop, layout.ab_packs))
    before = sha256_file(shop.database)

    # The shop was copied to another folder: its snapshots are of the original's path.
    proc = shop.run("restore", layout.a, "--in-place", "--from-other-source", expect=None)

    assert proc.returncode in (1, 3)
    assert sha256_file(shop.database) == before
    assert files_under(shop.staging) == []
    assert files_under(shop.home / "safety") == []


def test_verify_reports_a_damaged_index_file_and_rebuild_index_repairs_it(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    shop, layout = damaged
    flip_byte(shop.repository / "index" / layout.ab_index)

    proc = shop.run("verify", expect=3)
    assert f"index {layout.ab_index[:12]}" in proc.stdout
    assert layout.a[:12] in proc.stdout and layout.b[:12] in proc.stdout
    assert layout.c[:12] not in proc.stdout

    shop.run("rebuild-index", expect=0)
    shop.run("verify", "--read-data", expect=0)
    shop.restore(layout.a, tmp_path / "a")
    assert sha256_file(tmp_path / "a" / "pos.db") == shop.manifest_sha256(layout.a)


def test_verify_names_the_snapshot_whose_manifest_is_damaged(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    shop, layout = damaged
    flip_byte(shop.snapshot_file(layout.b))

    proc = shop.run("verify", expect=3)
    report = shop.run("verify", "--json", expect=3)

    assert f"affects snapshot {layout.b[:12]}" in proc.stdout
    assert layout.a[:12] not in proc.stdout and layout.c[:12] not in proc.stdout
    hit = {a["snapshot_id"] for p in json.loads(report.stdout)["problems"] for a in p["affected"]}
    assert hit == {layout.b}
    shop.restore(layout.a, tmp_path / "a")
    assert sha256_file(tmp_path / "a" / "pos.db") == shop.manifest_sha256(layout.a)


def test_backup_still_works_when_another_snapshot_manifest_is_damaged(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    shop, layout = damaged
    flip_byte(shop.snapshot_file(layout.b))

    new = shop.backup()

    shop.restore(new["snapshot_id"], tmp_path / "new")
    assert file_content_digest(tmp_path / "new" / "pos.db", immutable=True) == file_content_digest(
        shop.database
    )


def test_plain_verify_names_the_snapshots_that_need_a_deleted_pack(damaged: tuple[Shop, Layout]) -> None:
    shop, layout = damaged
    pack = largest(shop, layout.ab_packs)
    pack.unlink()

    proc = shop.run("verify", expect=3)

    assert f"pack {pack.name[:12]} is missing" in proc.stdout
    assert f"affects snapshot {layout.a[:12]}: pos.db" in proc.stdout
    assert f"affects snapshot {layout.b[:12]}: pos.db" in proc.stdout
    assert layout.c[:12] not in proc.stdout


def test_plain_verify_names_the_snapshots_that_need_a_truncated_pack(damaged: tuple[Shop, Layout]) -> None:
    shop, layout = damaged
    pack = largest(shop, layout.ab_packs)
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])

    proc = shop.run("verify", expect=3)

    assert f"pack {pack.name[:12]} is shorter than the index says" in proc.stdout
    assert f"affects snapshot {layout.a[:12]}: pos.db" in proc.stdout
    assert f"affects snapshot {layout.b[:12]}: pos.db" in proc.stdout
    assert layout.c[:12] not in proc.stdout


def test_rebuild_index_then_full_backup_after_a_pack_is_lost_makes_a_sound_snapshot(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    shop, layout = damaged
    lost = largest(shop, layout.ab_packs)
    lost.unlink()
    packs_before = {p.name for p in shop.packs()}

    # The documented repair: rebuild the index from the packs that are there, then a full backup.
    shop.run("rebuild-index", expect=0)
    full = shop.backup("--full")

    assert full["full"] is True
    assert full["totals"]["new_blobs"] > 0 and full["totals"]["stored_bytes"] > 0
    assert {p.name for p in shop.packs()} - packs_before, "the full backup wrote no pack"
    # A and B hold the same content as the database now: the blobs stored again make them whole too.
    shop.run("verify", "--read-data", expect=0)
    for sid in (full["snapshot_id"], layout.a):
        target = tmp_path / sid[:12]
        shop.restore(sid, target)
        assert sha256_file(target / "pos.db") == shop.manifest_sha256(sid)


@pytest.mark.slow
def test_full_backup_without_rebuilding_the_index_first_still_makes_a_restorable_snapshot(
    damaged: tuple[Shop, Layout], tmp_path: Path
) -> None:
    base, layout = damaged
    largest(base, layout.ab_packs).unlink()
    # Index file names are hashes of random ciphertext: prefer an attempt whose new index sorts
    # after the one naming the lost pack (the order that once broke restores). The index must
    # prefer packs on disk whatever the order, so the last attempt is checked all the same.
    for attempt in range(12):
        shop = copy_shop(base, tmp_path / f"attempt-{attempt}")
        full = shop.backup("--full", expect=3)  # it says packs are missing
        written = {p.name for p in shop.index_files()} - {p.name for p in base.index_files()}
        if written and min(written) > layout.ab_index:
            break

    # `--full` promises to reuse no blob whose pack is gone, so its snapshot must stand on its own.
    report = shop.run("verify", "--json", expect=None)
    hit = {a["snapshot_id"] for p in json.loads(report.stdout)["problems"] for a in p["affected"]}
    assert full["snapshot_id"] not in hit
    shop.restore(full["snapshot_id"], tmp_path / "restored")
