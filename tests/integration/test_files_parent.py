"""The parent snapshot in a files backup: its tree blobs read as plain JSON, compared on raw
fields, and made into entries' models only when a group is needed whole."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capsule.adapters.errors import IntegrityError
from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.parent import same, unchanged
from capsule.adapters.files.tree import iter_entries, parse_group, tree_ids
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.repo import Repository
from capsule.adapters.sqlite.backup import BackupResult
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry

SHA = "ab" * 32


class Folder:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "uploads"
        self.root.mkdir()
        self.repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key")
        self.time = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)

    def backup(self) -> BackupResult:
        self.time += timedelta(seconds=1)
        return backup_files(self.repo, self.root, now=self.time)

    def entries(self, result: BackupResult) -> dict[str, Entry]:
        return {e.path: e for e in iter_entries(self.repo, result.manifest)}


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    found = Folder(tmp_path)
    for number in range(400):  # several tree blobs
        path = found.root / f"cat{number // 50}" / f"p{number:03}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"image %d" % number)
    for category in range(8):
        (found.root / f"cat{category}" / "empty").mkdir()
        os.symlink(f"p{category * 50:03}.jpg", found.root / f"cat{category}" / "first")
    return found


def test_nothing_changed_names_the_same_tree_blobs_folders_and_links_included(folder: Folder) -> None:
    first = folder.backup()

    second = folder.backup()

    assert second.manifest.tree == first.manifest.tree
    assert second.manifest.totals.read_files == 0
    assert (second.manifest.totals.files, second.manifest.totals.bytes) == (400, first.manifest.totals.bytes)
    assert second.manifest.totals.blobs == first.manifest.totals.blobs == 400


def test_a_changed_group_keeps_the_parents_other_entries_as_they_were(folder: Folder) -> None:
    first = folder.backup()
    (folder.root / "cat3" / "p170.jpg").write_bytes(b"a new image")
    os.utime(folder.root / "cat5" / "empty", ns=(1_700_000_000_000_000_000,) * 2)

    second = folder.backup()

    before, after = folder.entries(first), folder.entries(second)
    assert set(after) == set(before)
    changed = {p for p in after if after[p] != before[p]}
    assert changed == {"cat3/p170.jpg", "cat5/empty"}
    assert after["cat5/empty"].mtime_ns == 1_700_000_000_000_000_000
    assert second.manifest.totals.read_files == 1
    ids_before, ids_after = tree_ids(folder.repo, first.manifest), tree_ids(folder.repo, second.manifest)
    assert len(ids_after) == len(ids_before) >= 3
    # The groups that hold a change are written anew; the others are the parent's.
    assert 1 <= sum(a != b for a, b in zip(ids_before, ids_after, strict=True)) <= 2


def test_a_file_whose_change_time_moved_is_read_again_though_size_and_time_are_the_same(
    folder: Folder,
) -> None:
    folder.backup()
    path = folder.root / "cat1" / "p060.jpg"
    st = os.stat(path)
    path.write_bytes(b"image 99")  # the same length
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    second = folder.backup()

    assert second.manifest.totals.read_files == 1
    assert folder.entries(second)["cat1/p060.jpg"].sha256 != folder.entries(second)["cat1/p061.jpg"].sha256


def test_a_tree_blob_is_parsed_to_the_fields_it_holds() -> None:
    written = [{"path": "a.jpg", "size": 3, "mode": 420, "mtime_ns": 5, "sha256": SHA, "blobs": [SHA]}]

    group = parse_group(b"\x01" * 32, json.dumps(written).encode())

    assert group.items == written
    assert group.size == 1
    assert group.entry(0) == Entry.model_validate(written[0])


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"path": "a"}',
        b'["a.jpg"]',
        b'[{"size": 1}]',
        b'[{"path": 7, "mode": 420, "mtime_ns": 1}]',
    ],
)
def test_a_tree_blob_the_model_refuses_is_refused_when_parsed(raw: bytes) -> None:
    with pytest.raises(IntegrityError, match="does not hold valid entries"):
        parse_group(b"\x02" * 32, raw)


@pytest.mark.parametrize("path", ["../escape.jpg", "/etc/passwd", "a//b.jpg", "a/./b.jpg", "a/", ""])
def test_a_tree_blob_with_an_unsafe_path_is_refused_when_parsed(path: str) -> None:
    raw = json.dumps([{"path": path, "mode": 420, "mtime_ns": 1, "sha256": SHA}]).encode()

    with pytest.raises(UnsafePath):
        parse_group(b"\x02" * 32, raw)


def test_an_entry_the_model_refuses_is_refused_when_needed_whole() -> None:
    # Parsed, its path checked; the model's other checks run when the entry is needed whole.
    group = parse_group(b"\x03" * 32, b'[{"path": "a.jpg", "mode": 420, "mtime_ns": 1}]')  # no SHA-256

    assert group.items[0]["path"] == "a.jpg"
    with pytest.raises(IntegrityError, match="has no SHA-256"):
        group.entry(0)


def test_a_parents_entry_is_the_same_folder_or_link_whatever_defaults_it_spells_out() -> None:
    folder = Entry(path="cat", type="dir", mode=0o755, mtime_ns=9, inode=4)
    written = folder.model_dump(mode="json", exclude_defaults=True)

    assert same(written, folder)
    assert same({**written, "size": 0, "target": None, "blobs": []}, folder)
    assert not same({**written, "mode": 0o700}, folder)
    assert not same({**written, "inode": None}, folder)
    link = Entry(path="l", type="symlink", mode=0o777, mtime_ns=9, inode=5, target="cat", size=3)
    assert same(link.model_dump(mode="json", exclude_defaults=True), link)
    assert not same({**link.model_dump(mode="json", exclude_defaults=True), "target": "dog"}, link)


def test_a_file_is_unchanged_only_if_size_time_inode_and_change_time_all_match(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    st = os.stat(path)
    raw = {
        "path": "a.jpg",
        "size": 3,
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
        "ctime_ns": st.st_ctime_ns,
    }

    assert unchanged(raw, st)
    assert unchanged({k: v for k, v in raw.items() if k != "ctime_ns"}, st)  # a parent without one
    for key, value in (("size", 4), ("mtime_ns", 1), ("inode", st.st_ino + 1), ("ctime_ns", 1)):
        assert not unchanged({**raw, key: value}, st)
    assert not unchanged({k: v for k, v in raw.items() if k != "inode"}, st)
    assert not unchanged({**raw, "type": "symlink"}, st)
