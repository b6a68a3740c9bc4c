"""A backup never builds on data that is gone: blobs whose pack was lost are stored again.

A pack file deleted from the repository (a disk fault, a careless clean-up) leaves the index naming
blobs that cannot be read. The next backup must not count them as stored: the database's pages, an
unchanged image reused from the parent snapshot, the tree and list blobs that describe a snapshot,
all are stored again, so the new snapshot restores. The older snapshots still need the lost pack, and
`verify` keeps saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.helpers import (
    DatabaseTemplates,
    MiB,
    Shop,
    copy_shop,
    file_content_digest,
    log_events,
    made_once,
)
from tests.integration.uploads import describe_tree, make_uploads


def uploads_env(shop: Shop) -> dict[str, str]:
    # Beside the shop, not in it: every copy of the shop backs up the very same files (inodes
    # included), so their unchanged files are reused from the parent snapshot without being read.
    return {"CAPSULE_UPLOADS": str(shop.root.parent.parent / "uploads")}


@pytest.fixture(scope="session")
def database_shop(shared_folder: Path, templates: DatabaseTemplates) -> Shop:
    """A 4 MiB database backed up twice (the second backup reads the index cache) in 1 MiB packs,
    made once for the run: the tests change copies of it."""

    def make(root: Path) -> None:
        shop = Shop(root)
        templates.copy(shop.database, size_mib=4)
        shop.init(env={"CAPSULE_PACK_SIZE": str(MiB)})
        shop.backup()
        shop.backup()
        assert len(shop.packs()) >= 2

    return Shop(made_once(shared_folder / "lost-packs-db", make))


@pytest.fixture(scope="module")
def files_shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """Product images (3 MiB of video among them) backed up in 1 MiB packs, and no database."""
    shop = Shop(tmp_path_factory.mktemp("lost-packs-files") / "first" / "shop")
    make_uploads(Path(uploads_env(shop)["CAPSULE_UPLOADS"]), big=3 * MiB)
    shop.init(env={"CAPSULE_PACK_SIZE": str(MiB)})
    shop.run("backup", "--kind", "files", "--json", env=uploads_env(shop), expect=0)
    assert len(shop.packs()) >= 3
    return shop


def _verify_hits(shop: Shop, env: dict[str, str] | None = None) -> set[str]:
    """The snapshots `verify` says are hurt."""
    proc = shop.run("verify", "--json", env=env, expect=None)
    report = json.loads(proc.stdout)
    return {a["snapshot_id"] for p in report["problems"] for a in p["affected"]}


def _lost_pack_warning(stderr: str) -> dict[str, object]:
    found = [e for e in log_events(stderr) if "missing" in str(e.get("event", "")) and "packs" in e]
    assert len(found) == 1, stderr
    return found[0]


@pytest.mark.slow
def test_a_database_backup_after_a_pack_was_deleted_restores(database_shop: Shop, tmp_path: Path) -> None:
    for number, pack in enumerate(database_shop.packs()):
        shop = copy_shop(database_shop, tmp_path / f"shop-{number}")
        before = {s["snapshot_id"] for s in shop.snapshots()}
        lost = shop.repository / pack.relative_to(database_shop.repository)
        lost.unlink()
        left = {p.name for p in shop.packs()}

        proc = shop.run("backup", "--kind", "database", "--json", expect=3)
        new = json.loads(proc.stdout)
        again = shop.backup(expect=3)  # the index cache now knows the pack is gone: still not fooled

        # The pack lost held pages or lists (packs of their own): what it held is stored again.
        assert {p.name for p in shop.packs()} - left, f"nothing was stored again after losing {pack.name}"
        warning = _lost_pack_warning(proc.stderr)
        assert warning["packs"] == 1
        assert "capsule verify" in str(warning["event"])
        for sid in (new["snapshot_id"], again["snapshot_id"]):
            target = tmp_path / f"restored-{number}-{sid[:12]}"
            shop.restore(sid, target)
            assert file_content_digest(target / "pos.db", immutable=True) == file_content_digest(
                shop.database
            )
        # Same content, same blob ids: what was stored again makes the older snapshots whole too.
        assert before and _verify_hits(shop) == set()


def test_older_snapshots_still_need_the_lost_pack_when_the_database_changed(
    database_shop: Shop, templates: DatabaseTemplates, tmp_path: Path
) -> None:
    shop = copy_shop(database_shop, tmp_path / "shop")
    before = {s["snapshot_id"] for s in shop.snapshots()}
    max(shop.packs(), key=lambda p: p.stat().st_size).unlink()
    templates.copy(shop.database, size_mib=4, seed=7)  # other sales: other pages

    new = shop.backup(expect=3)

    shop.restore(new["snapshot_id"], tmp_path / "restored")
    assert file_content_digest(tmp_path / "restored" / "pos.db", immutable=True) == file_content_digest(
        shop.database
    )
    assert _verify_hits(shop) == before


@pytest.mark.slow
def test_a_files_backup_after_a_pack_was_deleted_stores_unchanged_files_again(
    files_shop: Shop, tmp_path: Path
) -> None:
    env = uploads_env(files_shop)
    expected = describe_tree(Path(env["CAPSULE_UPLOADS"]))
    read_again: list[int] = []
    for number, pack in enumerate(files_shop.packs()):
        shop = copy_shop(files_shop, files_shop.root.parent.parent / f"copy-{number}" / "shop")
        before = {s["snapshot_id"] for s in shop.snapshots()}
        (shop.repository / pack.relative_to(files_shop.repository)).unlink()

        proc = shop.run("backup", "--kind", "files", "--json", env=env, expect=3)
        new = json.loads(proc.stdout)

        assert new["totals"]["warnings"] == 1  # the missing pack, and nothing skipped
        read_again.append(new["totals"]["read_files"])
        assert _lost_pack_warning(proc.stderr)["packs"] == 1
        target = tmp_path / f"restored-{number}"
        shop.restore(new["snapshot_id"], target)
        assert describe_tree(target) == expected
        assert before and _verify_hits(shop, env) == set()
        reused = shop.run("backup", "--kind", "files", "--json", env=env, expect=3)  # still missing
        assert json.loads(reused.stdout)["totals"]["read_files"] == 0, "unchanged files were read"
    # Some pack held only some files' chunks (those files alone were read again); another held the
    # snapshot's tree (no entry of the parent could be trusted: every file was read again).
    assert min(read_again) < max(read_again) == 7, read_again


def test_a_files_backup_after_a_pack_was_lost_and_the_index_rebuilt_restores(
    files_shop: Shop, tmp_path: Path
) -> None:
    # After `rebuild-index` the index no longer names the lost pack, so no pack counts as missing;
    # the parent still names blobs no index holds. An unchanged file must not be taken from it
    # blindly: the new snapshot would name blobs that are nowhere.
    env = uploads_env(files_shop)
    expected = describe_tree(Path(env["CAPSULE_UPLOADS"]))
    for number, pack in enumerate(files_shop.packs()):
        shop = copy_shop(files_shop, files_shop.root.parent.parent / f"rebuilt-{number}" / "shop")
        (shop.repository / pack.relative_to(files_shop.repository)).unlink()
        shop.run("rebuild-index", expect=0)

        proc = shop.run("backup", "--kind", "files", "--json", env=env)
        assert proc.returncode in (0, 3), proc.stderr
        assert proc.stdout, proc.stderr[-3000:]
        new = json.loads(proc.stdout)
        target = tmp_path / f"restored-{number}"
        shop.restore(new["snapshot_id"], target)
        assert describe_tree(target) == expected
