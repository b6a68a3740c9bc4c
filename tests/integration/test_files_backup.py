"""Backing up the product images folder: what is read, what is reused, what is stored and how.

Each test backs up a real folder into a real repository with the engine's own functions, no job
runner: `backup_files` stores and commits one snapshot; its totals and entries say what happened.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.files import backup as files_backup
from capsule.adapters.files import parent as files_parent
from capsule.adapters.files import tree as files_tree
from capsule.adapters.files.backup import backup_files, store_files
from capsule.adapters.files.restore import restore_files
from capsule.adapters.files.tree import iter_entries, path_key, tree_ids
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.chunks import load_id_lists
from capsule.adapters.repository.pack import COMPRESSION_NONE, COMPRESSION_ZSTD
from capsule.adapters.repository.rebuild import rebuild_index
from capsule.adapters.repository.repo import DEFAULT_PACK_SIZE, Repository
from capsule.adapters.sqlite.backup import BackupResult
from capsule.domain.manifest import Entry, Manifest
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.verify import Verify, verify_repository
from tests.integration.uploads import describe_tree

KiB = 1024
MiB = 1024 * KiB


class Backups:
    """Backs up one folder into one repository, each snapshot a second after the last."""

    def __init__(self, tmp_path: Path, pack_size: int = DEFAULT_PACK_SIZE) -> None:
        self.root = tmp_path / "uploads"
        self.root.mkdir()
        self.repo = Repository.init(LocalBackend(tmp_path / "repo"), tmp_path / "key", pack_size=pack_size)
        self.time = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)

    def __call__(self, *, full: bool = False) -> BackupResult:
        self.time += timedelta(seconds=1)
        return backup_files(self.repo, self.root, full=full, now=self.time)

    def entries(self, manifest: Manifest) -> dict[str, Entry]:
        return {e.path: e for e in iter_entries(self.repo, manifest)}

    def data_ids(self, entry: Entry) -> list[bytes]:
        if entry.blob_lists:
            return load_id_lists(self.repo, entry.blob_lists)
        return [bytes.fromhex(b) for b in entry.blobs]

    def write(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@pytest.fixture
def backups(tmp_path: Path) -> Backups:
    return Backups(tmp_path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- what is read and what is reused -------------------------------------------------------------


def test_an_unchanged_file_is_reused_without_being_read_and_full_reads_it(backups: Backups) -> None:
    original = b"old image bytes " * 1000
    path = backups.write("shoes/red.jpg", original)
    blue = backups.write("shoes/blue.jpg", b"blue" * 500)
    first = backups()
    assert first.manifest.totals.read_files == 2
    entry = backups.entries(first.manifest)["shoes/red.jpg"]
    assert entry.ctime_ns == os.stat(path).st_ctime_ns

    second = backups()
    assert second.manifest.parent == first.snapshot_id
    assert (second.manifest.totals.read_files, second.manifest.totals.new_blobs) == (0, 0)
    assert second.manifest.tree == first.manifest.tree

    os.chmod(blue, 0o600)  # a new mode changes the change time: read again, no new blob
    third = backups()
    assert (third.manifest.totals.read_files, third.manifest.totals.new_blobs) == (1, 0)
    entries = backups.entries(third.manifest)
    assert entries["shoes/blue.jpg"].mode == 0o600
    assert entries["shoes/blue.jpg"].sha256 == backups.entries(first.manifest)["shoes/blue.jpg"].sha256

    full = backups(full=True)
    assert full.manifest.totals.read_files == 2
    assert full.manifest.totals.new_blobs == 0


def test_a_file_rewritten_in_place_with_its_old_modification_time_is_read_again(backups: Backups) -> None:
    original = b"old image bytes " * 1000
    path = backups.write("shoes/red.jpg", original)
    backups.write("shoes/blue.jpg", b"blue" * 500)
    first = backups()
    before = os.stat(path)

    # Other bytes of the same size, written in place, and the old modification time put back:
    # size, mtime and inode all match the parent's entry; only the change time tells.
    with open(path, "r+b") as f:
        f.write(b"NEW image bytes " * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    if after.st_ctime_ns == before.st_ctime_ns:  # a clock too coarse to tell the writes apart
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(path).st_ctime_ns != before.st_ctime_ns

    second = backups()
    assert second.manifest.parent == first.snapshot_id
    assert (second.manifest.totals.read_files, second.manifest.totals.new_blobs) == (1, 1)
    assert backups.entries(second.manifest)["shoes/red.jpg"].sha256 == sha256(path.read_bytes())


def test_a_parent_without_change_times_is_trusted_on_the_rest_once(backups: Backups) -> None:
    """Snapshots written before change times were recorded: the next backup reuses unchanged
    files on size, time and inode, and records their change times."""
    path = backups.write("shoes/red.jpg", b"red" * 100)
    first = backups()
    stripped = [e.model_copy(update={"ctime_ns": None}) for e in backups.entries(first.manifest).values()]
    tree = files_tree.TreeWriter(backups.repo)
    for entry in stripped:
        tree.add(entry)
    old = first.manifest.model_copy(
        update={"tree": tree.finish(), "time": backups.time + timedelta(seconds=0.5)}
    )
    backups.repo.flush()
    backups.repo.save_snapshot(old)

    second = backups()
    assert (second.manifest.totals.read_files, second.manifest.totals.new_blobs) == (0, 0)
    assert backups.entries(second.manifest)["shoes/red.jpg"].ctime_ns == os.stat(path).st_ctime_ns


def test_changed_and_new_files_are_read_removed_ones_go_and_every_snapshot_stands_alone(
    backups: Backups, tmp_path: Path
) -> None:
    backups.write("a.jpg", b"a" * 3000)
    backups.write("b.jpg", b"b" * 3000)
    backups.write("old/c.jpg", b"c" * 3000)
    first = backups()
    first_tree = describe_tree(backups.root)

    backups.write("b.jpg", b"B changed" * 100)
    backups.write("new/d.jpg", b"d" * 100)
    (backups.root / "old" / "c.jpg").unlink()
    second = backups()

    assert second.manifest.totals.read_files == 2
    assert second.manifest.totals.files == 3
    entries = backups.entries(second.manifest)
    assert sorted(entries) == ["a.jpg", "b.jpg", "new", "new/d.jpg", "old"]
    assert entries["b.jpg"].sha256 == sha256(b"B changed" * 100)
    # The parent still lists what it had, with the bytes it had.
    parent = backups.entries(backups.repo.load_snapshot(first.snapshot_id))
    assert sorted(parent) == ["a.jpg", "b.jpg", "old", "old/c.jpg"]
    assert parent["b.jpg"].sha256 == sha256(b"b" * 3000)

    for result, expected in ((first, first_tree), (second, describe_tree(backups.root))):
        out = tmp_path / f"restored-{result.snapshot_id[:8]}"
        restore_files(backups.repo, backups.repo.load_snapshot(result.snapshot_id), out)
        assert describe_tree(out) == expected


# ---- chunking and compression --------------------------------------------------------------------


def test_content_defined_chunks_store_little_after_an_insertion_or_an_append(backups: Backups) -> None:
    # One file streamed in chunks as it is read, one read whole first: both are cut by content.
    sizes = {"catalogue.bin": 24 * MiB, "brochure.pdf": 6 * MiB}
    data = {name: os.urandom(size) for name, size in sizes.items()}
    for name, content in data.items():
        backups.write(name, content)
    first = backups()
    assert first.manifest.totals.new_bytes == sum(sizes.values())
    old_ids = {name: backups.data_ids(backups.entries(first.manifest)[name]) for name in sizes}
    assert all(len(ids) >= 5 for ids in old_ids.values()), old_ids

    for name, content in data.items():
        middle = len(content) // 2
        data[name] = content[:middle] + os.urandom(100) + content[middle:]
        backups.write(name, data[name])
    second = backups()
    assert second.manifest.totals.read_files == 2
    assert second.manifest.totals.new_bytes < 8 * MiB
    assert second.manifest.totals.stored_bytes < 9 * MiB
    for name in sizes:
        new_ids = backups.data_ids(backups.entries(second.manifest)[name])
        assert len(set(old_ids[name]) & set(new_ids)) >= len(old_ids[name]) - 3, name

    path = backups.root / "catalogue.bin"
    path.write_bytes(data["catalogue.bin"] + os.urandom(1000))
    third = backups()
    assert third.manifest.totals.read_files == 1
    assert third.manifest.totals.new_blobs <= 2
    assert third.manifest.totals.new_bytes < 5 * MiB
    assert backups.entries(third.manifest)["catalogue.bin"].sha256 == sha256(path.read_bytes())


def _compressible(size: int) -> bytes:
    """Bytes zstd halves at least: random ones with runs of zeros between them."""
    out = bytearray()
    while len(out) < size:
        out += os.urandom(64) + bytes(192)
    return bytes(out[:size])


COMPRESSED_FORMATS = {
    "photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "photo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "photo.webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "sheets.zip": b"PK\x03\x04\x14\x00\x00\x00",
}


def test_images_and_archives_are_stored_without_compression_and_text_with_zstd(backups: Backups) -> None:
    # The bytes after each signature compress well: only the format decides, not zstd giving up.
    for name, magic in COMPRESSED_FORMATS.items():
        backups.write(name, magic + _compressible(64 * KiB))
    # Longer than the largest chunk, so it is cut at least once whatever its random bytes are.
    backups.write("big.jpg", COMPRESSED_FORMATS["photo.jpg"] + _compressible(files_backup.CDC_MAX + MiB))
    backups.write("random.jpg", COMPRESSED_FORMATS["photo.jpg"] + os.urandom(32 * KiB))
    text = b"".join(b"product %d: red shoe, size 42, price 59.90\n" % i for i in range(4000))
    backups.write("products.csv", text)
    result = backups()
    entries = backups.entries(result.manifest)

    index = backups.repo.index
    for name in [*COMPRESSED_FORMATS, "big.jpg", "random.jpg"]:
        ids = backups.data_ids(entries[name])
        locations = [index.lookup(i) for i in ids]
        assert all(loc is not None for loc in locations)
        assert {loc.compression for loc in locations if loc} == {COMPRESSION_NONE}, name
        assert sum(loc.length for loc in locations if loc) >= entries[name].size
    assert len(backups.data_ids(entries["big.jpg"])) > 1  # every chunk, not only the first

    [csv_id] = backups.data_ids(entries["products.csv"])
    loc = index.lookup(csv_id)
    assert loc is not None
    assert loc.compression == COMPRESSION_ZSTD
    assert loc.length < len(text) // 4


# ---- what an entry records -----------------------------------------------------------------------


def test_entries_record_path_size_mode_time_and_sha256_folders_and_links(
    backups: Backups, tmp_path: Path
) -> None:
    red = backups.write("shoes/red.jpg", b"\xff\xd8\xff red shoe")
    os.chmod(red, 0o640)
    os.utime(red, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (backups.root / "empty").mkdir()
    os.symlink("shoes/red.jpg", backups.root / "inside-link")
    outside = tmp_path / "outside-secret.txt"
    outside_content = b"not part of the uploads folder " * 50
    outside.write_bytes(outside_content)
    os.symlink(outside, backups.root / "outside-link")

    result = backups()
    entries = backups.entries(result.manifest)

    assert sorted(entries) == ["empty", "inside-link", "outside-link", "shoes", "shoes/red.jpg"]
    file = entries["shoes/red.jpg"]
    st = os.stat(red)
    assert file.type == "file"
    assert (file.size, file.mode, file.mtime_ns, file.inode) == (
        st.st_size,
        0o640,
        1_700_000_000_123_456_789,
        st.st_ino,
    )
    assert file.sha256 == sha256(red.read_bytes())
    assert entries["shoes"].type == entries["empty"].type == "dir"
    assert entries["empty"].mode == stat.S_IMODE(os.stat(backups.root / "empty").st_mode)
    assert entries["shoes"].sha256 is None and entries["shoes"].blobs == []

    inside, outside_link = entries["inside-link"], entries["outside-link"]
    assert (inside.type, inside.target) == ("symlink", "shoes/red.jpg")
    assert (outside_link.type, outside_link.target) == ("symlink", str(outside))
    assert inside.blobs == inside.blob_lists == outside_link.blobs == outside_link.blob_lists == []
    assert outside_link.size == len(str(outside).encode())
    # The link was not followed: the content it points to is nowhere in the repository.
    assert not backups.repo.has_blob(backups.repo.sealer.blob_id(outside_content))
    totals = result.manifest.totals
    assert (totals.files, totals.bytes, totals.new_blobs, totals.new_bytes) == (1, st.st_size, 1, st.st_size)


def test_fifos_and_sockets_are_skipped_with_a_warning_naming_them(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    backups.write("shoes/red.jpg", b"red")
    os.mkfifo(backups.root / "shoes" / "pipe")
    # A relative address keeps the socket's path under the 108-byte limit whatever tmp_path is.
    monkeypatch.chdir(backups.root)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind("till.sock")
        result = backups()
    finally:
        server.close()

    assert sorted(backups.entries(result.manifest)) == ["shoes", "shoes/red.jpg"]
    assert result.manifest.totals.warnings == 2
    assert result.manifest.warnings == [
        "shoes/pipe: skipped: it is a named pipe (FIFO), which a backup cannot hold",
        "till.sock: skipped: it is a socket, which a backup cannot hold",
    ]


# ---- files that cannot be read as they are -------------------------------------------------------


def _patch_open(monkeypatch: pytest.MonkeyPatch, before: Callable[[str, int], None]) -> list[str]:
    """Run `before(name, dir_fd)` ahead of every open of a file to read; return the names opened."""
    original = files_backup._open_file
    opened: list[str] = []

    def open_file(name: str, dir_fd: int) -> int:
        opened.append(name)
        before(name, dir_fd)
        return original(name, dir_fd)

    monkeypatch.setattr(files_backup, "_open_file", open_file)
    return opened


def _deny(target: str) -> Callable[[str, int], None]:
    def before(name: str, _dir_fd: int) -> None:
        if name == target:
            raise PermissionError(errno.EACCES, "Permission denied")

    return before


def test_an_unreadable_new_file_is_skipped_with_a_warning(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    backups.write("secret.jpg", b"secret")
    backups.write("shown.jpg", b"shown")
    _patch_open(monkeypatch, _deny("secret.jpg"))

    result = backups()

    assert sorted(backups.entries(result.manifest)) == ["shown.jpg"]
    assert result.manifest.warnings == ["secret.jpg: skipped: it could not be read (Permission denied)"]
    assert result.manifest.totals.warnings == 1


def test_an_unreadable_changed_file_keeps_the_version_of_the_previous_backup(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    backups.write("secret.jpg", b"first version")
    first = backups()
    kept = backups.entries(first.manifest)["secret.jpg"]
    backups.write("secret.jpg", b"second version, longer")
    _patch_open(monkeypatch, _deny("secret.jpg"))

    second = backups()

    assert backups.entries(second.manifest)["secret.jpg"] == kept
    assert second.manifest.warnings == [
        "secret.jpg: it could not be read (Permission denied); the version from the previous backup is kept"
    ]
    assert second.manifest.totals.read_files == 0


def test_a_file_that_changes_while_it_is_read_gives_a_warning(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    growing = backups.write("growing.png", os.urandom(2 * MiB))
    backups.write("still.png", b"still")

    # Cutting chunks comes after the read started and before it ends: append to the file then,
    # as a program writing it at that moment would. Only the large file is cut into chunks.
    original = files_backup._Walker._chunker

    class Appending:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def cut_buf(self, data: Any) -> Any:
            with open(growing, "ab") as f:
                f.write(b"more bytes")
            return self.inner.cut_buf(data)

        def cut_stream(self, stream: Any) -> Any:
            return self.inner.cut_stream(stream)

    monkeypatch.setattr(files_backup._Walker, "_chunker", lambda self: Appending(original(self)))

    result = backups()

    assert sorted(backups.entries(result.manifest)) == ["still.png"]
    assert result.manifest.warnings == ["growing.png: skipped: it changed while it was read"]
    assert result.manifest.totals.warnings == 1


def test_a_file_that_vanishes_before_it_is_read_gives_a_warning(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    backups.write("cat1/gone.jpg", b"gone")
    backups.write("cat1/here.jpg", b"here")

    def delete_first(name: str, dir_fd: int) -> None:
        if name == "gone.jpg":
            os.unlink(name, dir_fd=dir_fd)

    opened = _patch_open(monkeypatch, delete_first)
    result = backups()

    assert "gone.jpg" in opened
    assert sorted(backups.entries(result.manifest)) == ["cat1", "cat1/here.jpg"]
    assert result.manifest.warnings == ["cat1/gone.jpg: skipped: it vanished before it could be read"]


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning(backups: Backups) -> None:
    backups.write("good.jpg", b"good")
    with open(os.path.join(os.fsencode(backups.root), b"bad\xff.jpg"), "wb") as f:
        f.write(b"bad name")

    result = backups()

    assert sorted(backups.entries(result.manifest)) == ["good.jpg"]
    [warning] = result.manifest.warnings
    assert warning.startswith("bad")
    assert warning.endswith(".jpg: skipped: its name is not valid UTF-8")


# ---- many files ----------------------------------------------------------------------------------


def test_twenty_thousand_unchanged_files_cost_almost_nothing_and_one_change_little(
    backups: Backups,
) -> None:
    for folder in range(250):
        base = backups.root / f"cat{folder:03}"
        base.mkdir()
        for number in range(80):
            fd = os.open(base / f"p{number}.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"%d/%d" % (folder, number))
            os.close(fd)
    first = backups()
    assert first.manifest.totals.files == 20_000
    assert first.manifest.totals.read_files == 20_000
    first_trees = tree_ids(backups.repo, first.manifest)
    assert len(first_trees) > 100

    second = backups()
    totals = second.manifest.totals
    assert (totals.files, totals.read_files, totals.new_blobs, totals.new_bytes) == (20_000, 0, 0, 0)
    assert totals.stored_bytes < 10 * KiB
    assert second.manifest.tree == first.manifest.tree

    backups.write("cat123/p45.jpg", b"a new photo")
    third = backups()
    totals = third.manifest.totals
    assert (totals.read_files, totals.new_blobs) == (1, 1)
    assert totals.stored_bytes < 64 * KiB
    third_trees = tree_ids(backups.repo, third.manifest)
    assert len(third_trees) == len(first_trees)
    assert sum(a != b for a, b in zip(first_trees, third_trees, strict=True)) == 1
    assert backups.entries(third.manifest)["cat123/p45.jpg"].sha256 == sha256(b"a new photo")


def test_entries_come_in_walk_order_across_tree_blobs(backups: Backups) -> None:
    for name in ("a/b", "a/b.c/d", "a.txt", "a-b", "b/a"):
        backups.write(name, name.encode())
    for number in range(300):  # enough entries for several tree blobs
        backups.write(f"many/{number}", b"x")

    result = backups()
    paths = [e.path for e in iter_entries(backups.repo, result.manifest)]

    assert paths[:7] == ["a", "a/b", "a/b.c", "a/b.c/d", "a-b", "a.txt", "b"]
    assert paths == sorted(paths, key=path_key)
    assert len(paths) == len(set(paths)) == 309
    assert len(tree_ids(backups.repo, result.manifest)) > 1


def test_a_tree_reader_left_unfinished_lets_go_without_waiting_for_its_thread(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader dropped midway may be finalized by the garbage collector on any thread, even inside
    the interpreter's own thread start-up; waiting there for its read-ahead thread hung a backup."""
    for number in range(300):  # enough entries for several tree blobs
        backups.write(f"many/{number}", b"x")
    result = backups()
    original, release, reads = files_tree._read_stored, threading.Event(), []

    def read_stored(repo: Repository, loc: Any) -> bytes | None:
        reads.append(loc)
        if len(reads) > 1:
            release.wait(30)  # the read ahead is still going when the reader is dropped
        return original(repo, loc)

    monkeypatch.setattr(files_tree, "_read_stored", read_stored)
    # One blob a read-ahead task: the first group comes at once, the next read waits (with the
    # usual batches all of these blobs are read by the first task, which then waits for itself).
    monkeypatch.setattr(files_tree, "READ_BATCH", 1)
    reader = files_tree.read_groups(backups.repo, tree_ids(backups.repo, result.manifest))
    first_group, _ = next(reader)
    closer = threading.Thread(target=reader.close)
    try:
        closer.start()
        closer.join(5)
        assert not closer.is_alive(), "closing the reader waited for its read-ahead thread"
        assert first_group.size > 0
    finally:
        release.set()
        closer.join(30)


# ---- verify ---------------------------------------------------------------------------------------


def test_verify_names_the_images_a_lost_pack_held(tmp_path: Path) -> None:
    backups = Backups(tmp_path, pack_size=64 * KiB)
    for name in ("cat1/red.jpg", "cat1/blue.jpg", "cat2/green.jpg"):
        backups.write(name, COMPRESSED_FORMATS["photo.jpg"] + os.urandom(100 * KiB))
    first = backups()
    backups.write("cat2/new.jpg", b"another")
    second = backups()

    [blob_id] = backups.data_ids(backups.entries(second.manifest)["cat1/blue.jpg"])
    loc = backups.repo.index.lookup(blob_id)
    assert loc is not None
    in_pack = dict(backups.repo.index.by_pack())[loc.pack_id]
    assert [b for b, _ in in_pack] == [blob_id]  # the pack holds that image alone
    backups.repo.backend.path_of("data", loc.pack_id).unlink()

    settings = Settings(repository=tmp_path / "repo", home=tmp_path / "home", key_file=tmp_path / "key")
    report = verify_repository(settings, Verify())

    [problem] = report.problems
    assert problem.subject == f"pack {loc.pack_id[:12]}"
    assert "is missing" in problem.message
    assert problem.affected == sorted(
        [(first.snapshot_id, "cat1/blue.jpg"), (second.snapshot_id, "cat1/blue.jpg")]
    )


def test_store_files_reports_figures_without_committing(backups: Backups) -> None:
    backups.write("a.jpg", b"a" * 100)
    os.symlink("a.jpg", backups.root / "link")

    stored = store_files(backups.repo, backups.root, now=datetime(2026, 11, 25, tzinfo=UTC))

    assert (stored.files, stored.dirs, stored.symlinks, stored.bytes) == (1, 0, 1, 100)
    assert stored.parent is None and stored.tree
    assert stored.source == str(backups.root.resolve())
    assert list(backups.repo.backend.list("snapshots")) == []


def test_small_files_read_in_batches_leave_no_descriptor_open(backups: Backups) -> None:
    for folder in range(3):
        for number in range(150):  # more than one batch a folder
            backups.write(f"cat{folder}/sub/p{number}.jpg", b"%d/%d" % (folder, number))
        backups.write(f"cat{folder}/large.png", os.urandom(300 * KiB))  # read alone, between batches
    before = set(os.listdir("/proc/self/fd"))

    result = backups()

    assert result.manifest.totals.read_files == 453
    entries = backups.entries(result.manifest)
    assert entries["cat2/sub/p149.jpg"].sha256 == sha256(b"2/149")
    assert set(os.listdir("/proc/self/fd")) - before == set()


def test_every_file_of_a_batch_is_asked_of_the_disk_before_the_first_is_read(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(10):
        backups.write(f"cat/p{number}.jpg", b"%d" % number)
    steps: list[tuple[str, int]] = []
    read_ahead, read_whole = files_backup.read_ahead, files_backup.read_whole

    def asking(fd: int, size: int) -> None:
        steps.append(("ask", size))
        read_ahead(fd, size)

    def reading(fd: int, size: int) -> bytes:
        steps.append(("read", size))
        return read_whole(fd, size)

    monkeypatch.setattr(files_backup, "read_ahead", asking)
    monkeypatch.setattr(files_backup, "read_whole", reading)

    result = backups()

    assert result.manifest.totals.read_files == 10
    assert [kind for kind, _ in steps] == ["ask"] * 10 + ["read"] * 10
    assert [size for _, size in steps[:10]] == [1] * 10


def test_a_batch_that_fails_part_way_closes_the_files_it_opened_and_not_read(
    backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(20):
        backups.write(f"cat/p{number:02}.jpg", b"%d" % number)
    original = files_backup._Walker._read
    calls = 0

    def failing(self: Any, fd: int, st: os.stat_result, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fd, st, **kwargs)

    monkeypatch.setattr(files_backup._Walker, "_read", failing)

    with pytest.raises(OSError) as raised:
        backups()

    assert raised.value.errno == errno.ENOSPC
    into_uploads = [
        target
        for fd in os.listdir("/proc/self/fd")
        if (target := _fd_target(fd)) is not None and target.startswith(str(backups.root))
    ]
    assert calls == 5
    assert into_uploads == []


def _fd_target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


@pytest.mark.parametrize("told", [0, 1, 4095, 4096, 4097, 100_000])
@pytest.mark.parametrize("size", [0, 1, 4096, 70_000])
def test_read_whole_returns_every_byte_whatever_size_it_was_told(
    tmp_path: Path, size: int, told: int
) -> None:
    path = tmp_path / "file"
    data = os.urandom(size)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert files_backup.read_whole(fd, told) == data
    finally:
        os.close(fd)


def test_a_file_whose_pack_was_lost_is_read_again_whichever_set_of_groups_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent's files are checked a set of groups at a time, before any entry of the set goes
    # to the walk. One group a set here: every group but the first is checked in a later set.
    monkeypatch.setattr(files_parent, "CHECKED_GROUPS", 1)
    backups = Backups(tmp_path, pack_size=4096)
    for n in range(400):
        backups.write(f"f{n // 40:02d}/{n:03d}.txt", os.urandom(512))
    first = backups()
    repo = backups.repo
    groups = tree_ids(repo, first.manifest)
    assert len(groups) > 2
    holds_tree = {loc.pack_id for loc in repo.index.locate_many(groups) if loc is not None}
    holds_tree |= {
        loc.pack_id for loc in repo.index.locate_many([bytes.fromhex(i) for i in first.manifest.tree])
    }
    first_group = {e.path for e in files_tree.load_group(repo, groups[0])}
    # A file past the first group whose pack holds no tree blob: losing it keeps the tree whole.
    lost = next(
        e
        for e in reversed(list(iter_entries(repo, first.manifest)))
        if e.type == "file"
        and e.path not in first_group
        and (loc := repo.index.lookup(bytes.fromhex(e.blobs[0]))) is not None
        and loc.pack_id not in holds_tree
    )
    pack = repo.index.lookup(bytes.fromhex(lost.blobs[0]))
    assert pack is not None
    repo.backend.remove("data", pack.pack_id)
    rebuild_index(repo)
    repo = backups.repo = Repository.open(LocalBackend(tmp_path / "repo"), tmp_path / "key")

    second = backups()

    assert second.manifest.totals.read_files >= 1
    entry = backups.entries(second.manifest)[lost.path]
    assert all(repo.index.contains(i) for i in backups.data_ids(entry))
    restore_files(repo, second.manifest, tmp_path / "restored")
    assert describe_tree(tmp_path / "restored") == describe_tree(backups.root)
