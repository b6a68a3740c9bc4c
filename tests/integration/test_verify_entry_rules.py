"""`verify` reports every files snapshot that `restore` would refuse, naming the snapshot and path.

The crafted snapshots are those restore refuses in test_files_restore.py, sealed with the
repository's own key: every blob authenticates, so only the rules on the entries find them. A rule
that needs no file data (paths, order, types, sizes against the index) is checked by a plain
`verify`; a file's SHA-256 needs its bytes, so only `verify --read-data` checks it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.chunks import store_id_lists
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.repository.verify import VerifyReport, verify
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import Entry
from tests.integration.helpers import Shop
from tests.integration.test_files_restore import FORGERIES, World, _legit, make_world
from tests.unit.support import reopen


@dataclass(frozen=True)
class Crafted:
    name: str
    snapshot: Callable[[World], str]  # makes the snapshot, returns its id
    words: Callable[[World], str]  # what verify's problem must say
    needs_data: bool = False  # only a check that reads the files' bytes can find it


def _tree_of(named: str) -> Callable[[World], str]:
    def snapshot(w: World) -> str:
        image_id = bytes.fromhex(w.stored["a.jpg"]["blobs"][0])
        blob_id = image_id if named == "image" else bytes.fromhex(store_id_lists(w.repo, image_id)[0])
        return w.commit(store_id_lists(w.repo, blob_id))

    return snapshot


def _joined(w: World, path: str, *parts: str) -> dict[str, object]:
    """A file made of the blobs of `parts`, of the right size, with the first part's SHA-256."""
    blobs = [b for part in parts for b in w.stored[part]["blobs"]]
    return w.file(path, like=parts[0], blobs=blobs, size=sum(w.stored[p]["size"] for p in parts))


CRAFTED = [
    *(Crafted(f.name, lambda w, f=f: w.craft_id(*f.groups(w)), f.names) for f in FORGERIES),
    Crafted(
        "a file of the snapshot used as a folder",
        lambda w: w.craft_id([w.file("a"), w.file("a/b", like="b.jpg")]),
        lambda w: "'a/b' passes through the file 'a'",
    ),
    Crafted("a tree naming a list blob", _tree_of("list"), lambda w: "is named as a tree"),
    Crafted(
        "a list of trees naming an image blob",
        lambda w: w.commit([w.stored["a.jpg"]["blobs"][0]]),
        lambda w: "is named as a list but holds data",
    ),
    Crafted("a tree naming an image blob", _tree_of("image"), lambda w: "does not hold valid entries"),
    Crafted(
        "a size its blobs do not have",
        lambda w: w.craft_id([*_legit(w), w.file("c.jpg", size=3003)]),
        lambda w: "c.jpg",
    ),
    Crafted(
        "a SHA-256 its bytes do not have",
        lambda w: w.craft_id([*_legit(w), w.file("c.jpg", sha256="0" * 64)]),
        lambda w: "c.jpg does not match its snapshot",
        needs_data=True,
    ),
    Crafted(
        "a SHA-256 the bytes of its several blobs do not have",
        lambda w: w.craft_id([*_legit(w), _joined(w, "c.jpg", "a.jpg", "b.jpg")]),
        lambda w: "c.jpg does not match its snapshot",
        needs_data=True,
    ),
]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def _hits(report: VerifyReport, snapshot_id: str) -> list[str]:
    """The problems that name `snapshot_id`, as `message (path)` lines."""
    return [f"{p.message} ({path})" for p in report.problems for s, path in p.affected if s == snapshot_id]


@pytest.mark.parametrize("read_data", [False, True], ids=["structure", "read-data"])
@pytest.mark.parametrize("crafted", CRAFTED, ids=[c.name for c in CRAFTED])
def test_verify_reports_every_files_snapshot_restore_refuses(
    world: World, crafted: Crafted, read_data: bool
) -> None:
    snapshot_id = crafted.snapshot(world)
    with pytest.raises(CapsuleError):
        world.restore(world.load(snapshot_id))

    report = verify(reopen(world.repo, world.key_file), read_data=read_data)

    if crafted.needs_data and not read_data:
        assert report.ok, report.problems
        return
    hits = _hits(report, snapshot_id)
    assert hits, f"verify found nothing wrong with a snapshot restore refuses: {report.problems}"
    assert any(crafted.words(world) in hit for hit in hits), hits
    assert not _hits(report, world.backup_id), "the real backup is sound"


def test_verify_reports_nothing_in_a_sound_files_snapshot_with_links_and_folders(tmp_path: Path) -> None:
    source = tmp_path / "uploads"
    (source / "shoes" / "summer").mkdir(parents=True)
    (source / "a.jpg").write_bytes(b"a" * 100)
    (source / "shoes" / "summer" / "red.jpg").write_bytes(b"red" * 100)
    (source / "shoes" / "logo").symlink_to("../a.jpg")
    (source / "shoes-old").symlink_to("shoes")
    world = make_world(tmp_path / "w", source)
    world.restore(world.backup())

    for read_data in (False, True):
        report = verify(reopen(world.repo, world.key_file), read_data=read_data)
        assert report.ok, report.problems


def test_the_verify_command_names_each_crafted_snapshot_and_exits_3(tmp_path: Path) -> None:
    shop = Shop(tmp_path / "shop")
    shop.init()
    repo = Repository.open(LocalBackend(shop.repository), shop.key_file)
    world = make_world(tmp_path, opened=(repo, shop.key_file))
    crafted = {c.name: (c, c.snapshot(world)) for c in CRAFTED}

    for args in (["verify"], ["verify", "--read-data"]):
        text = shop.run(*args, expect=3)
        report = json.loads(shop.run(*args, "--json", expect=3).stdout)

        named = {a["snapshot_id"] for p in report["problems"] for a in p["affected"]}
        for name, (case, snapshot_id) in crafted.items():
            if case.needs_data and "--read-data" not in args:
                continue
            assert snapshot_id in named, (args, name)
            assert f"affects snapshot {snapshot_id[:12]}" in text.stdout, (args, name)
        assert world.backup_id not in named


# ---- database snapshots --------------------------------------------------------------------------


def _database_snapshot(w: World, entries: list[dict[str, object]]) -> str:
    w.repo.flush()
    manifest = w.load(w.backup_id).model_copy(
        update={"kind": "database", "tree": [], "entries": [Entry.model_validate(e) for e in entries]}
    )
    return w.repo.save_snapshot(manifest)


DATABASE_FORGERIES = {
    "no file": lambda w: [],
    "two files": lambda w: [w.file("pos.db"), w.file("pos.db-wal", like="b.jpg")],
    "a folder": lambda w: [w.folder("pos.db")],
}


@pytest.mark.parametrize("forgery", DATABASE_FORGERIES.values(), ids=DATABASE_FORGERIES.keys())
def test_a_database_snapshot_that_is_not_one_file_is_refused_by_restore_and_reported_by_verify(
    world: World, forgery: Callable[[World], list[dict[str, object]]]
) -> None:
    snapshot_id = _database_snapshot(world, forgery(world))

    with pytest.raises(IntegrityError, match="one database file"):
        restore_snapshot(reopen(world.repo, world.key_file), world.load(snapshot_id), world.to)
    assert not world.to.exists() or not any(world.to.iterdir())

    for read_data in (False, True):
        hits = _hits(verify(reopen(world.repo, world.key_file), read_data=read_data), snapshot_id)
        assert any("one database file" in hit for hit in hits), hits


def test_a_sound_database_snapshot_of_one_file_passes(world: World) -> None:
    snapshot_id = _database_snapshot(world, [world.file("pos.db")])

    restore_snapshot(reopen(world.repo, world.key_file), world.load(snapshot_id), world.to)

    assert (world.to / "pos.db").read_bytes() == (world.source / "a.jpg").read_bytes()
    assert not _hits(verify(reopen(world.repo, world.key_file), read_data=True), snapshot_id)


def _database_of_lists(w: World, ids: bytes, size: int) -> str:
    """A database snapshot of one file whose blobs are named through list blobs, as a backup names
    a database's pages."""
    lists = store_id_lists(w.repo, ids)
    return _database_snapshot(w, [w.file("pos.db", blobs=[], blob_lists=lists, size=size)])


def _images(w: World) -> tuple[bytes, int]:
    ids = b"".join(bytes.fromhex(b) for p in ("a.jpg", "b.jpg") for b in w.stored[p]["blobs"])
    return ids, sum(w.stored[p]["size"] for p in ("a.jpg", "b.jpg"))


def test_a_database_file_whose_list_blobs_hold_another_size_is_reported(world: World) -> None:
    ids, size = _images(world)
    sound = _database_of_lists(world, ids, size)
    forged = _database_of_lists(world, ids, size + 1)

    for read_data in (False, True):
        report = verify(reopen(world.repo, world.key_file), read_data=read_data)
        assert not _hits(report, sound)
        hits = _hits(report, forged)
        assert any(f"its blobs hold {size}" in hit and hit.endswith("(pos.db)") for hit in hits), hits


def test_a_database_file_whose_list_blob_names_a_blob_in_no_index_is_reported(world: World) -> None:
    ids, size = _images(world)
    snapshot_id = _database_of_lists(world, ids + bytes(32), size)

    report = verify(reopen(world.repo, world.key_file))

    [problem] = [p for p in report.problems if p.subject == "blobs"]
    assert "in no index" in problem.message and problem.affected == [(snapshot_id, "pos.db")]
