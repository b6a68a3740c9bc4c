"""One image back reads the tree blobs on the way to it, not the whole tree.

A snapshot of 20,000 files is written here as a backup writes its tree (`TreeWriter`: the same
groups, the same cut points), every file with the content of one real backed-up image, so that it
takes a fraction of a second to make. What a restore or `cat` reads is counted by the repository
itself (`Repository.blobs_opened`), never timed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.files.restore import Selection, cat_file, restore_files
from capsule.adapters.files.tree import TreeWriter, iter_entries, path_key, tree_ids
from capsule.adapters.files.treesearch import TreeSearch
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, Manifest
from tests.integration.test_files_restore import OLD_NS, World, make_world, state_of
from tests.unit.support import reopen

FOLDERS = 100
PER_FOLDER = 200  # 100 folders of 200 images and the folders themselves: 20,100 entries


def write_tree(world: World, entries: list[dict[str, Any]]) -> Manifest:
    """A files snapshot of `entries` (in any order), its tree written as a backup writes it."""
    writer = TreeWriter(world.repo)
    for entry in sorted(entries, key=lambda e: path_key(e["path"])):
        writer.add(Entry.model_validate(entry))
    return world.load(world.commit(writer.finish()))


def shop_of(world: World, folders: int = FOLDERS, per_folder: int = PER_FOLDER) -> list[dict[str, Any]]:
    entries = []
    for f in range(folders):
        entries.append(world.folder(f"products/p{f:03d}"))
        entries += [world.file(f"products/p{f:03d}/img-{n:05d}.jpg") for n in range(per_folder)]
    return [world.folder("products"), *entries]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


@pytest.fixture
def big(tmp_path: Path) -> tuple[World, Manifest]:
    world = make_world(tmp_path)
    return world, write_tree(world, shop_of(world))


def opened(world: World) -> Repository:
    repo = reopen(world.repo, world.key_file)
    repo.ensure_index()
    return repo


def test_restore_include_of_one_image_reads_only_the_tree_blobs_on_its_way(
    big: tuple[World, Manifest],
) -> None:
    world, manifest = big
    wanted = "products/p057/img-00123.jpg"
    everything = opened(world)
    groups = len(tree_ids(everything, manifest))
    before = everything.blobs_opened
    assert sum(1 for _ in iter_entries(everything, manifest)) == 1 + FOLDERS * (1 + PER_FOLDER)
    whole_tree = everything.blobs_opened - before
    repo = opened(world)

    done = restore_files(repo, manifest, world.to, include=[wanted])

    assert done.files == 1
    assert (world.to / wanted).read_bytes() == (world.source / "a.jpg").read_bytes()
    assert groups > 250 and whole_tree >= groups
    # The list blobs naming the groups, a binary search over them for the image and for each of
    # its two folders (mostly the same groups), the image's own group, and the image's one blob.
    assert repo.blobs_opened <= 2 + 3 * 10, f"{repo.blobs_opened} blobs of {groups} groups read"


def test_cat_of_one_image_reads_only_the_tree_blobs_on_its_way(big: tuple[World, Manifest]) -> None:
    world, manifest = big
    repo = opened(world)
    out = io.BytesIO()

    cat_file(repo, manifest, "products/p099/img-00199.jpg", out)

    assert out.getvalue() == (world.source / "a.jpg").read_bytes()
    assert repo.blobs_opened <= 2 + 10 + 1


def test_restore_include_of_a_folder_reads_its_groups_and_restores_all_of_it(
    big: tuple[World, Manifest],
) -> None:
    world, manifest = big
    repo = opened(world)
    groups = len(tree_ids(repo, manifest))

    done = restore_files(repo, manifest, world.to, include=["products/p010/", "products/p011/img-0000?.jpg"])

    restored = sorted(p for p, s in state_of(world.to).items() if s[0] == "file")
    assert restored == sorted(
        [f"products/p010/img-{n:05d}.jpg" for n in range(PER_FOLDER)]
        + [f"products/p011/img-{n:05d}.jpg" for n in range(10)]
    )
    assert done.files == len(restored)
    # Each file's blob, and the tree blobs: two searches, the folder's groups and the next one.
    tree_blobs = repo.blobs_opened - done.files
    assert tree_blobs <= 2 + 2 * 10 + 8, f"{tree_blobs} tree and list blobs of {groups} groups read"


def test_search_finds_every_path_and_the_entries_under_any_prefix(tmp_path: Path) -> None:
    """Against reading the whole tree: every path found where it is, a missing one nowhere, and
    the entries under each prefix the same, among groups cut as a backup cuts them."""
    world = make_world(tmp_path)
    manifest = write_tree(world, shop_of(world, folders=12, per_folder=40))
    repo = opened(world)
    every = list(iter_entries(repo, manifest))
    assert len(tree_ids(repo, manifest)) > 5
    search = TreeSearch(repo, manifest)

    for entry in every:
        assert search.find(entry.path) == entry
    for missing in ["products/p005/img-00040.jpg", "products/p005/img", "products/q", "a", "zzz"]:
        assert search.find(missing) is None

    prefixes = [["products", "p003"], ["products", "p007", "img-00003.jpg"], ["products", "p011"], ["nope"]]
    read = list(TreeSearch(repo, manifest).entries_under(prefixes))
    assert [path_key(e.path) for e in read] == sorted(path_key(e.path) for e in read)
    for prefix in prefixes:
        under = [e for e in every if path_key(e.path)[: len(prefix)] == prefix]
        assert [e for e in read if path_key(e.path)[: len(prefix)] == prefix] == under


def test_a_link_of_the_snapshot_on_the_way_is_refused_though_its_group_is_far_from_the_file(
    world: World,
) -> None:
    """The file's folders are looked up too: a path through a link or a file of the snapshot is
    refused as a whole restore refuses it."""
    under_link = [world.file(f"up/a{n:03d}.jpg") for n in range(40)]
    manifest = world.craft(
        [world.file("a.jpg"), world.link("up", "../outside")],
        under_link[:20],
        under_link[20:],
        [world.folder("up/x"), world.file("up/x/evil.jpg", mtime_ns=OLD_NS)],
    )
    outside_before = state_of(world.outside)

    with pytest.raises(UnsafePath, match="passes through the symbolic link 'up'"):
        world.restore(manifest, include=["up/x/evil.jpg"])

    assert state_of(world.to) == {}
    assert state_of(world.outside) == outside_before


@pytest.mark.parametrize(
    ("patterns", "prefixes"),
    [
        ([], None),
        (["shoes/red.jpg"], [["shoes", "red.jpg"]]),
        (["/shoes/", "./bags/*.jpg"], [["shoes"], ["bags"]]),
        (["shoes/**/x.jpg", "a/b?/c"], [["shoes"], ["a"]]),
        (["shoes/red.jpg", "**/*.png"], None),
        (["[ab]*/x.jpg"], None),
    ],
)
def test_a_pattern_is_searched_from_its_components_before_the_first_wildcard(
    patterns: list[str], prefixes: list[list[str]] | None
) -> None:
    assert Selection(patterns).prefixes() == prefixes


def test_a_snapshot_whose_tree_lists_no_group_has_nothing_under_any_path(world: World) -> None:
    manifest = world.craft()
    repo = opened(world)

    assert list(TreeSearch(repo, manifest).entries_under([["shoes"]])) == []
    assert TreeSearch(repo, manifest).find("shoes/red.jpg") is None
