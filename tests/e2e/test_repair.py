"""`capsule repair` after a pack is damaged: what is intact is kept, what is lost is named, the damaged
files are set aside (never deleted), `verify` passes again, and the next backup heals.

One byte is flipped inside a chosen blob (a product image's, or a page of the database's), as a
failing disk would, so that the test knows exactly what was lost.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.repository.chunks import load_id_lists
from capsule.adapters.repository.repo import Repository
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository
from tests.integration.helpers import Shop, file_content_digest, flip_byte, one_line_error, sha256_file
from tests.integration.uploads import make_uploads

LOST_IMAGE = "cat1/red.jpg"


def images_env(shop: Shop) -> dict[str, str]:
    return {"CAPSULE_UPLOADS": str(shop.root / "uploads")}


def open_repo(shop: Shop) -> Repository:
    settings = Settings(database=shop.database, repository=shop.repository, home=shop.home)
    repo = open_repository(settings)
    repo.load_index(use_cache=False)
    return repo


def flip_in_blob(shop: Shop, blob_id: bytes) -> str:
    """Flip the middle byte of one stored blob; return the pack's name."""
    loc = open_repo(shop).index.lookup(blob_id)
    assert loc is not None
    flip_byte(shop.repository / "data" / loc.pack_id[:2] / loc.pack_id, loc.offset + loc.length // 2)
    return loc.pack_id


def image_blob(shop: Shop, snapshot: str, path: str) -> bytes:
    from capsule.adapters.files.tree import iter_entries

    repo = open_repo(shop)
    entry = next(e for e in iter_entries(repo, repo.load_snapshot(snapshot)) if e.path == path)
    return bytes.fromhex(entry.blobs[0]) if entry.blobs else load_id_lists(repo, entry.blob_lists)[0]


def page_blob(shop: Shop, snapshot: str) -> bytes:
    repo = open_repo(shop)
    entry = repo.load_snapshot(snapshot).entries[0]
    ids = (
        load_id_lists(repo, entry.blob_lists) if entry.blob_lists else [bytes.fromhex(b) for b in entry.blobs]
    )
    return ids[len(ids) // 2]


def tree_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def both(shop: Shop) -> tuple[Shop, str, str]:
    make_uploads(shop.root / "uploads")
    proc = shop.run("backup", "--kind", "all", "--json", env=images_env(shop), expect=0)
    database, files = json.loads(proc.stdout)["snapshots"]
    return shop, database["snapshot_id"], files["snapshot_id"]


def repair(shop: Shop, *args: str, expect: int = 0) -> dict[str, Any]:
    proc = shop.run("repair", "--json", *args, env=images_env(shop), expect=expect)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.slow
def test_repair_of_a_damaged_image_keeps_the_rest_and_the_next_backup_heals(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, files = both
    pack = flip_in_blob(shop, image_blob(shop, files, LOST_IMAGE))
    shop.run("verify", "--read-data", env=images_env(shop), expect=3)

    # A dry run says what it would do and changes nothing.
    before = tree_state(shop.repository)
    planned = shop.run("repair", "--dry-run", env=images_env(shop), expect=0)
    assert tree_state(shop.repository) == before
    assert pack[:12] in planned.stdout
    assert f"{files[:12]}" in planned.stdout and LOST_IMAGE in planned.stdout
    assert "Nothing was changed" in planned.stdout

    done = repair(shop)
    assert done["damaged_packs"] == [pack]
    assert done["salvaged_blobs"] > 0
    [lost] = done["snapshots"]
    assert lost["snapshot_id"] == files and lost["lost"] == [LOST_IMAGE]
    replacement = lost["replaced_by"]
    assert replacement and replacement != files
    # Nothing is deleted: the damaged pack and the old manifest are set aside, byte for byte.
    assert (shop.repository / "damaged" / pack).read_bytes() == before[f"data/{pack[:2]}/{pack}"]
    assert (shop.repository / "damaged" / files).read_bytes() == before[f"snapshots/{files}"]
    assert not (shop.repository / "data" / pack[:2] / pack).exists()

    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    again = repair(shop)
    assert again["damaged_packs"] == [] and again["snapshots"] == []

    # The database snapshot was intact and still restores.
    shop.restore(database, tmp_path / "db")
    assert sha256_file(tmp_path / "db" / "pos.db") == shop.manifest_sha256(database)
    # The repaired images snapshot restores everything but the lost image.
    shop.restore(replacement, tmp_path / "kept")
    kept = tree_state(tmp_path / "kept")
    assert LOST_IMAGE not in kept
    assert kept["cat1/notes.txt"] == (shop.root / "uploads" / "cat1" / "notes.txt").read_bytes()

    # The image is still in the source: the next backup stores it again.
    shop.run("backup", "--kind", "files", env=images_env(shop), expect=0)
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.run("restore", "latest-files", "--to", str(tmp_path / "healed"), env=images_env(shop), expect=0)
    source = shop.root / "uploads" / LOST_IMAGE
    assert (tmp_path / "healed" / LOST_IMAGE).read_bytes() == source.read_bytes()


@pytest.mark.slow
def test_a_database_snapshot_that_lost_a_page_is_set_aside_and_listed_as_damaged(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, files = both
    flip_in_blob(shop, page_blob(shop, database))

    text = shop.run("repair", env=images_env(shop), expect=0)
    assert f"{database[:12]}" in text.stdout and "cannot be restored" in text.stdout
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    listed = {row["snapshot_id"]: row for row in shop.snapshots(env=images_env(shop))}
    assert "set aside by `capsule repair`" in listed[database]["damaged"]
    refused = shop.restore(database, tmp_path / "db", expect=None)
    assert refused.returncode == 3 and "capsule repair" in one_line_error(refused)

    # The live database still has the page: the next backup stores it again, and restores whole.
    shop.run("backup", "--kind", "database", env=images_env(shop), expect=0)
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.run("restore", "latest-database", "--to", str(tmp_path / "new"), env=images_env(shop), expect=0)
    assert file_content_digest(tmp_path / "new" / "pos.db") == file_content_digest(shop.database)
    shop.restore(files, tmp_path / "images")


def test_a_lost_index_file_says_how_to_rebuild_it(both: tuple[Shop, str, str], tmp_path: Path) -> None:
    shop, database, _ = both
    index = shop.repository / "index"
    shutil.move(index, shop.root / "index-aside")
    index.mkdir()

    proc = shop.restore(database, tmp_path / "db", expect=3)
    message = one_line_error(proc)
    assert "is in no index" in message and "capsule rebuild-index" in message

    shop.run("rebuild-index", expect=0)
    shop.restore(database, tmp_path / "db")


def test_a_key_file_that_does_not_open_the_repository_is_named(shop: Shop) -> None:
    body = json.loads(shop.key_file.read_text())
    secret = bytearray(body["secret"].encode())
    secret[2] = ord("A") if secret[2] != ord("A") else ord("B")
    body["secret"] = secret.decode()
    shop.key_file.write_text(json.dumps(body))

    message = one_line_error(shop.run("verify", expect=1))
    assert str(shop.key_file) in message
    assert body["secret"] not in message
    with_passphrase = one_line_error(shop.run("verify", env={"CAPSULE_PASSPHRASE": "not it"}, expect=1))
    assert str(shop.key_file) in with_passphrase and "not it" not in with_passphrase


@pytest.mark.slow
def test_a_missing_pack_is_forgotten_and_every_snapshot_that_needed_it_is_set_aside(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, _ = both
    gone = max(shop.packs(), key=lambda p: p.stat().st_size)
    gone.rename(tmp_path / gone.name)  # as if the disk lost it
    shop.run("verify", env=images_env(shop), expect=3)

    done = repair(shop)
    assert done["missing_packs"] == [gone.name]
    hurt = {s["snapshot_id"]: s for s in done["snapshots"]}
    assert database in hurt and hurt[database]["replaced_by"] is None
    for sid, loss in hurt.items():
        assert loss["lost"], sid
        assert not (shop.repository / "snapshots" / sid).exists()
        assert (shop.repository / "damaged" / sid).exists() or loss["replaced_by"]
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.run("backup", "--kind", "all", env=images_env(shop), expect=0)
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.run("restore", "latest-database", "--to", str(tmp_path / "db"), env=images_env(shop), expect=0)
    assert file_content_digest(tmp_path / "db" / "pos.db") == file_content_digest(shop.database)


@pytest.mark.slow
def test_a_damaged_index_file_is_replaced_and_nothing_is_lost(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, files = both
    [first, *_] = shop.index_files()
    flip_byte(first)
    shop.run("verify", env=images_env(shop), expect=3)

    done = repair(shop)
    assert done["damaged_index_files"] == [first.name]
    assert done["damaged_packs"] == [] and done["snapshots"] == []
    assert first.name not in [p.name for p in shop.index_files()]
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.restore(database, tmp_path / "db")
    shop.restore(files, tmp_path / "images")


def test_repair_of_a_sound_repository_changes_nothing(both: tuple[Shop, str, str]) -> None:
    shop, _, _ = both
    before = tree_state(shop.repository)
    text = shop.run("repair", env=images_env(shop), expect=0)
    assert "No damage found; nothing to repair." in text.stdout
    after = tree_state(shop.repository)
    assert {k: v for k, v in after.items() if not k.startswith("locks/")} == {
        k: v for k, v in before.items() if not k.startswith("locks/")
    }


@pytest.mark.slow
def test_repair_after_an_index_file_went_missing_indexes_the_packs_again_and_loses_nothing(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, files = both
    for index in shop.index_files():
        index.rename(tmp_path / index.name)

    planned = repair(shop, "--dry-run")
    assert planned["snapshots"] == [] and planned["damaged_packs"] == []
    done = repair(shop)
    assert done["snapshots"] == [] and done["damaged_packs"] == []
    assert done["indexed_packs"] == len(shop.packs())
    assert sorted(p.name for p in (shop.repository / "snapshots").iterdir()) == sorted([database, files])
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.restore(database, tmp_path / "db")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["salvaged", "copied", "indexed", "replaced"])
def test_a_repair_killed_midway_is_finished_by_the_next_one(
    both: tuple[Shop, str, str], tmp_path: Path, point: str
) -> None:
    shop, database, files = both
    flip_in_blob(shop, image_blob(shop, files, LOST_IMAGE))
    env = images_env(shop)

    killed = shop.run("repair", env={**env, "CAPSULE_FAULTS": f"repair:{point}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    shop.run("unlock", "--all", env=env, expect=0)  # a killed process leaves its lock behind
    shop.run("repair", env=env, expect=0)
    shop.run("verify", "--read-data", env=env, expect=0)
    assert (shop.repository / "damaged" / files).exists()
    kinds = sorted(row["kind"] for row in shop.snapshots(env=env) if "damaged" not in row)
    assert kinds == ["database", "files"]  # one replacement, however far the first repair got
    shop.restore(database, tmp_path / "db")
    assert sha256_file(tmp_path / "db" / "pos.db") == shop.manifest_sha256(database)
    shop.run("backup", "--kind", "files", env=env, expect=0)
    shop.run("verify", "--read-data", env=env, expect=0)
    shop.run("restore", "latest-files", "--to", str(tmp_path / "images"), env=env, expect=0)
    source = shop.root / "uploads" / LOST_IMAGE
    assert (tmp_path / "images" / LOST_IMAGE).read_bytes() == source.read_bytes()


@pytest.mark.slow
def test_a_pack_whose_header_is_damaged_loses_nothing(both: tuple[Shop, str, str], tmp_path: Path) -> None:
    shop, database, files = both
    pack = max(shop.packs(), key=lambda p: p.stat().st_size)
    flip_byte(pack, pack.stat().st_size - 100)  # inside the sealed list of its blobs
    shop.run("verify", "--read-data", env=images_env(shop), expect=3)

    done = repair(shop)
    assert done["damaged_packs"] == [pack.name]
    assert done["damaged_pack_details"][0]["lost"] == 0 and done["salvaged_blobs"] > 0
    assert done["snapshots"] == []
    shop.run("verify", "--read-data", env=images_env(shop), expect=0)
    shop.restore(database, tmp_path / "db")
    assert sha256_file(tmp_path / "db" / "pos.db") == shop.manifest_sha256(database)
    shop.restore(files, tmp_path / "images")
    assert tree_state(tmp_path / "images") == tree_state(shop.root / "uploads")
