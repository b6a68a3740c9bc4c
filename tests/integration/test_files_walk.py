"""The walk of a files backup: the same items and warnings whether folders are listed on the
walking thread or ahead on threads, in walk order, with no descriptor left open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsule.adapters.files import walk as files_walk
from capsule.adapters.files.tree import path_key
from capsule.adapters.files.walk import Walk

Item = tuple[str, str, int, int, int, int]


def _make_tree(root: Path) -> None:
    for category in range(12):
        for product in range(4):
            folder = root / f"cat{category:02}" / f"p{product}"
            folder.mkdir(parents=True)
            for number in range(3):
                (folder / f"img{number}.jpg").write_bytes(b"%d/%d/%d" % (category, product, number))
        (root / f"cat{category:02}" / "empty").mkdir()
    os.symlink("cat00/p0/img0.jpg", root / "to-file")
    os.symlink("cat01", root / "to-folder")  # a link to a folder is an item, never entered
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "cat03" / "pipe")
    (root / "locked" / "inside").mkdir(parents=True)
    (root / "locked" / "inside" / "hidden.jpg").write_bytes(b"hidden")
    (root / os.fsdecode(b"bad-\xff-name")).write_bytes(b"x")


def _walk(root: Path, threads: int) -> tuple[list[Item], list[tuple[str, str]]]:
    warnings: list[tuple[str, str]] = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    walk = Walk(lambda path, reason: warnings.append((path, reason)), lambda: None, threads=threads)
    try:
        items = [
            (path, name, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns) for path, name, st, _ in walk(fd)
        ]
    finally:
        walk.close()
        os.close(fd)
    return items, warnings


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "uploads"
    root.mkdir()
    _make_tree(root)
    locked = os.stat(root / "locked").st_ino
    original = files_walk._list

    def listing(fd: int) -> files_walk.Listed:
        if os.fstat(fd).st_ino == locked:  # as for a folder this user may not read
            raise PermissionError(13, "Permission denied")
        return original(fd)

    monkeypatch.setattr(files_walk, "_list", listing)
    return root


@pytest.mark.parametrize("ahead", [3, Walk.AHEAD])
def test_folders_listed_ahead_on_threads_give_what_the_walking_thread_finds_alone(
    tree: Path, monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    # With a budget of 3, most folders are opened with part of their subfolders left for later,
    # and listed ahead when the walk enters them.
    serial = _walk(tree, threads=0)
    monkeypatch.setattr(Walk, "AHEAD", ahead)

    threaded = _walk(tree, threads=4)

    assert threaded == serial
    items, warnings = serial
    paths = [path for path, *_ in items]
    assert paths == sorted(paths, key=path_key)
    assert len(paths) == len(set(paths))
    kinds = {path: stat.S_IFMT(mode) for path, _, mode, *_ in items}
    assert kinds["to-file"] == kinds["to-folder"] == kinds["dangling"] == stat.S_IFLNK
    assert kinds["cat05/empty"] == stat.S_IFDIR
    assert kinds["cat03/pipe"] == stat.S_IFIFO  # the backup, not the walk, refuses it
    assert sum(kind == stat.S_IFREG for kind in kinds.values()) == 12 * 4 * 3
    assert not any(path.startswith(("to-folder/", "locked/")) for path in paths)
    assert "locked" in paths
    assert warnings == [
        ("bad-\\xff-name", "skipped: its name is not valid UTF-8"),
        ("locked", "the folder could not be read (Permission denied); its contents are not backed up"),
    ]


@pytest.mark.parametrize("threads", [0, 4])
def test_a_walk_leaves_no_folder_open(tree: Path, threads: int) -> None:
    before = set(os.listdir("/proc/self/fd"))

    items, _ = _walk(tree, threads)

    assert len(items) > 100
    assert set(os.listdir("/proc/self/fd")) - before == set()


def test_a_walk_stopped_midway_closes_what_it_opened(tree: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    walk = Walk(lambda path, reason: None, lambda: None, threads=4)
    items = walk(fd)
    try:
        for path, *_ in items:
            if path == "cat04/p2":
                break
    finally:
        items.close()
        walk.close()
        os.close(fd)

    assert set(os.listdir("/proc/self/fd")) - before == set()
