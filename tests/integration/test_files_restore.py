"""Restoring a files snapshot writes only under `--to`, and only content that matches the snapshot.

The forged snapshots here are sealed with the repository's own key, as someone holding the key (or
a bug in a backup) could write them: every tree blob authenticates, so only the restore's own checks
stand between a hostile entry and the disk. Each one must be refused before a single byte is
written, under `--to` or anywhere else.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.errors import IntegrityError, RestoreRefused
from capsule.adapters.files import restore as files_restore
from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.restore import (
    CLASHES_SHOWN,
    PARTIAL_MARK,
    FilesRestored,
    cat_file,
    remove_partial_writes,
    restore_files,
)
from capsule.adapters.files.tree import iter_entries, tree_ids
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.chunks import store_id_lists
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, Manifest, Totals
from tests.integration.helpers import Shop, flip_byte, one_line_error
from tests.unit.support import new_repository, reopen

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
OLD_NS = 1_500_000_000_123_456_789  # July 2017, with nanoseconds
JPEG = b"\xff\xd8\xff\xe0"

Json = dict[str, Any]
Group = list[Json] | bytes


# ---- a repository with real content, and forged snapshots of it ----------------------------------


def state_of(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under `folder`, links not followed: kind, content or target, mode, mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    if not folder.exists():
        return found
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent) / name
            st = os.lstat(path)
            relative = str(path.relative_to(folder))
            if stat.S_ISLNK(st.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[relative] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                found[relative] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return found


def partial_writes(folder: Path) -> list[str]:
    return [name for name in state_of(folder) if PARTIAL_MARK in name]


@dataclass
class World:
    """A repository holding one real backup of `source`; `to` and `outside` are side by side."""

    repo: Repository
    key_file: Path
    source: Path
    to: Path
    outside: Path
    stored: dict[str, Json]  # the real backup's entries by path, as a tree blob holds them
    backup_id: str
    tree_type: int  # the blob type a backup gives tree blobs

    def file(self, path: str, like: str = "a.jpg", **changes: Any) -> Json:
        """A file entry with the content of the backed-up file `like`."""
        return {**self.stored[like], "path": path, **changes}

    @staticmethod
    def link(path: str, target: str) -> Json:
        return {
            "path": path,
            "type": "symlink",
            "target": target,
            "size": len(target.encode()),
            "mode": 0o777,
            "mtime_ns": OLD_NS,
        }

    @staticmethod
    def folder(path: str, mode: int = 0o755) -> Json:
        return {"path": path, "type": "dir", "mode": mode, "mtime_ns": OLD_NS}

    def craft(self, *groups: Group) -> Manifest:
        return self.load(self.craft_id(*groups))

    def craft_id(self, *groups: Group) -> str:
        """A files snapshot whose tree blobs hold `groups` as given (JSON, or raw bytes), sealed."""
        ids = bytearray()
        for group in groups:
            raw = group if isinstance(group, bytes) else json.dumps(group).encode()
            blob = self.repo.prepare(self.tree_type, raw)
            self.repo.add(blob)
            ids += blob.blob_id
        return self.commit(store_id_lists(self.repo, bytes(ids)))

    def commit(self, tree: list[str]) -> str:
        self.repo.flush()
        manifest = Manifest(
            kind="files",
            time=NOW,
            hostname="till-1",
            source=str(self.source),
            tree=tree,
            totals=Totals(
                files=0, bytes=0, blobs=0, new_blobs=0, new_bytes=0, stored_bytes=0, duration_seconds=0
            ),
        )
        return self.repo.save_snapshot(manifest)

    def load(self, snapshot_id: str) -> Manifest:
        """A snapshot read back from disk, as a restore reads it."""
        return reopen(self.repo, self.key_file).load_snapshot(snapshot_id)

    def backup(self) -> Manifest:
        return self.load(self.backup_id)

    def restore(self, manifest: Manifest, **options: Any) -> FilesRestored:
        return restore_files(reopen(self.repo, self.key_file), manifest, self.to, **options)

    def blob_of(self, path: str) -> tuple[Path, int, int]:
        """The pack file holding the first blob of the stored file `path`, and where in it."""
        loc = self.repo.index.lookup(bytes.fromhex(self.stored[path]["blobs"][0]))
        assert loc is not None
        return self.repo.backend.path_of("data", loc.pack_id), loc.offset, loc.length


def make_source(root: Path) -> Path:
    source = root / "uploads"
    (source / "shoes").mkdir(parents=True)
    (source / "a.jpg").write_bytes(JPEG + b"a" * 3000)
    (source / "b.jpg").write_bytes(JPEG + b"b" * 2000)
    (source / "shoes" / "red.jpg").write_bytes(JPEG + b"red" * 1000)
    (source / "shoes" / "blue.jpg").write_bytes(JPEG + b"blue" * 1000)
    return source


def make_world(
    root: Path, source: Path | None = None, opened: tuple[Repository, Path] | None = None
) -> World:
    """A repository (new, or `opened`) holding one backup of `source` (by default `make_source`)."""
    repo, key_file = opened or new_repository(root / "repo-root")
    source = source or make_source(root)
    result = backup_files(repo, source, now=NOW)
    stored = {
        e.path: e.model_dump(mode="json", exclude_none=True) for e in iter_entries(repo, result.manifest)
    }
    tree_loc = repo.index.lookup(tree_ids(repo, result.manifest)[0])
    assert tree_loc is not None
    outside = root / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"the shop's own file\n")
    return World(repo, key_file, source, root / "to", outside, stored, result.snapshot_id, tree_loc.blob_type)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def assert_nothing_written(world: World, to_before: dict[str, Any], outside_before: dict[str, Any]) -> None:
    assert state_of(world.to) == to_before
    assert state_of(world.outside) == outside_before
    assert not (world.outside.parent / "evil.jpg").exists()


# ---- forged snapshots: every escape is refused before anything is written -----------------------


@dataclass(frozen=True)
class Forgery:
    name: str
    groups: Callable[[World], list[Group]]
    error: type[Exception]
    names: Callable[[World], str]  # what the error message must mention


def _legit(w: World) -> list[Json]:
    """Entries a naive restorer would already have written when it meets the hostile one."""
    return [w.file("a.jpg"), w.file("b.jpg")]


def _without(entry: Json, key: str) -> Json:
    return {k: v for k, v in entry.items() if k != key}


FORGERIES = [
    Forgery(
        "absolute path",
        lambda w: [_legit(w), [w.file(str(w.outside / "evil.jpg"))]],
        UnsafePath,
        lambda w: str(w.outside / "evil.jpg"),
    ),
    Forgery(
        "dot-dot",
        lambda w: [_legit(w), [w.file("../outside/evil.jpg")]],
        UnsafePath,
        lambda w: "../outside/evil.jpg",
    ),
    Forgery(
        "dot-dot inside",
        lambda w: [_legit(w), [w.file("a/../../outside/evil.jpg")]],
        UnsafePath,
        lambda w: "a/../../outside/evil.jpg",
    ),
    Forgery(
        "dot-dot at the end",
        lambda w: [_legit(w), [w.folder("shoes/..")]],
        UnsafePath,
        lambda w: "shoes/..",
    ),
    Forgery(
        "through an absolute link of the snapshot",
        lambda w: [
            [*_legit(w), w.link("link", str(w.outside)), w.file("link/evil.jpg"), w.file("z.jpg")],
        ],
        UnsafePath,
        lambda w: "'link/evil.jpg' passes through the symbolic link 'link'",
    ),
    Forgery(
        "through a relative link of the snapshot, in a later group",
        lambda w: [[*_legit(w), w.link("up", "../outside")], [w.folder("up/x"), w.file("up/x/evil.jpg")]],
        UnsafePath,
        lambda w: "'up/x' passes through the symbolic link 'up'",
    ),
    Forgery(
        "a link listed again as a folder",
        lambda w: [[*_legit(w), w.link("link", str(w.outside)), w.folder("link"), w.file("link/evil.jpg")]],
        IntegrityError,
        lambda w: "'link' twice or out of order",
    ),
    Forgery(
        "the same path twice",
        lambda w: [[*_legit(w), w.file("b.jpg", like="a.jpg")]],
        IntegrityError,
        lambda w: "'b.jpg' twice or out of order",
    ),
    Forgery(
        "the same path twice, in two groups",
        lambda w: [_legit(w), [w.file("b.jpg")]],
        IntegrityError,
        lambda w: "'b.jpg' twice or out of order",
    ),
    Forgery(
        "out of walk order",
        lambda w: [[w.file("b.jpg"), w.file("a.jpg")]],
        IntegrityError,
        lambda w: "'a.jpg' twice or out of order",
    ),
    Forgery(
        "a folder after its content",
        lambda w: [[*_legit(w), w.file("shoes/red.jpg", like="shoes/red.jpg"), w.folder("shoes")]],
        IntegrityError,
        lambda w: "'shoes' twice or out of order",
    ),
    Forgery(
        "NUL byte",
        lambda w: [_legit(w), [w.file("c.jpg\x00/../../evil.jpg")]],
        UnsafePath,
        lambda w: repr("c.jpg\x00/../../evil.jpg"),
    ),
    Forgery(
        "backslashes",
        lambda w: [_legit(w), [w.file("c\\..\\..\\outside\\evil.jpg")]],
        UnsafePath,
        lambda w: repr("c\\..\\..\\outside\\evil.jpg"),
    ),
    Forgery("empty path", lambda w: [_legit(w), [w.file("")]], UnsafePath, lambda w: "''"),
    Forgery("dot path", lambda w: [_legit(w), [w.file("./c.jpg")]], UnsafePath, lambda w: "'./c.jpg'"),
    Forgery(
        "empty component", lambda w: [_legit(w), [w.file("c//d.jpg")]], UnsafePath, lambda w: "'c//d.jpg'"
    ),
    Forgery(
        "a link with content",
        lambda w: [_legit(w), [{**w.link("logo", "/etc/hostname"), "blobs": w.stored["a.jpg"]["blobs"]}]],
        IntegrityError,
        lambda w: "the symbolic link 'logo' has content",
    ),
    Forgery(
        "a link without a target",
        lambda w: [_legit(w), [_without(w.link("logo", "x"), "target") | {"size": 0}]],
        IntegrityError,
        lambda w: "'logo' has no valid target",
    ),
    Forgery(
        "a file without SHA-256",
        lambda w: [_legit(w), [_without(w.file("c.jpg"), "sha256")]],
        IntegrityError,
        lambda w: "the file 'c.jpg' has no SHA-256",
    ),
    Forgery(
        "a file with a link target",
        lambda w: [_legit(w), [w.file("c.jpg", target=str(w.outside))]],
        IntegrityError,
        lambda w: "the file 'c.jpg' has a link target",
    ),
    Forgery(
        "a folder with content",
        lambda w: [_legit(w), [{**w.folder("shoes"), "blobs": w.stored["a.jpg"]["blobs"]}]],
        IntegrityError,
        lambda w: "the folder 'shoes' has content",
    ),
    Forgery(
        "an unknown entry type",
        lambda w: [_legit(w), [{**w.folder("pipe"), "type": "fifo"}]],
        IntegrityError,
        lambda w: "does not hold valid entries",
    ),
    Forgery(
        "a negative size",
        lambda w: [_legit(w), [w.file("c.jpg", size=-1)]],
        IntegrityError,
        lambda w: "does not hold valid entries",
    ),
    Forgery(
        "a tree blob that is not a JSON array",
        lambda w: [_legit(w), b'{"path": "../outside/evil.jpg"}'],
        IntegrityError,
        lambda w: "does not hold valid entries",
    ),
]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("forgery", FORGERIES, ids=[f.name for f in FORGERIES])
def test_a_forged_snapshot_is_refused_and_nothing_is_written(
    world: World, forgery: Forgery, force: bool
) -> None:
    manifest = world.craft(*forgery.groups(world))
    outside_before = state_of(world.outside)

    with pytest.raises(forgery.error) as raised:
        world.restore(manifest, force=force)

    assert forgery.names(world) in str(raised.value)
    assert_nothing_written(world, {}, outside_before)


def test_a_forged_snapshot_is_refused_when_restoring_only_the_legitimate_files(world: World) -> None:
    """Selecting with --include does not skip the checks of the entries left out in the tree
    blobs it reads."""
    manifest = world.craft(
        [*_legit(world), world.link("link", str(world.outside)), world.file("link/evil.jpg")]
    )
    outside_before = state_of(world.outside)

    with pytest.raises(UnsafePath, match=r"link/evil\.jpg"):
        world.restore(manifest, include=["a.jpg"])

    assert_nothing_written(world, {}, outside_before)


@pytest.mark.parametrize("named", ["list blob", "image blob"])
def test_a_tree_naming_a_blob_that_is_no_tree_is_refused(world: World, named: str) -> None:
    image_id = bytes.fromhex(world.stored["a.jpg"]["blobs"][0])
    blob_id = image_id if named == "image blob" else bytes.fromhex(store_id_lists(world.repo, image_id)[0])
    manifest = world.load(world.commit(store_id_lists(world.repo, blob_id)))
    outside_before = state_of(world.outside)

    with pytest.raises(IntegrityError) as raised:
        world.restore(manifest)

    assert blob_id.hex()[:12] in str(raised.value)
    if named == "list blob":
        assert "named as a tree" in str(raised.value)
    assert_nothing_written(world, {}, outside_before)


def test_a_manifest_listing_an_escaping_entry_itself_cannot_be_loaded(world: World) -> None:
    body = {
        "version": 2,
        "kind": "files",
        "time": NOW.isoformat(),
        "hostname": "till-1",
        "source": str(world.source),
        "entries": [world.file("../outside/evil.jpg")],
        "totals": {
            "files": 1,
            "bytes": 1,
            "blobs": 1,
            "new_blobs": 0,
            "new_bytes": 0,
            "stored_bytes": 0,
            "duration_seconds": 0,
        },
    }
    name = world.repo.save_sealed("snapshots", json.dumps(body).encode())

    with pytest.raises(UnsafePath, match=r"\.\./outside/evil\.jpg"):
        reopen(world.repo, world.key_file).load_snapshot(name)


def test_a_file_of_the_snapshot_used_as_a_folder_is_refused_before_anything_is_written(world: World) -> None:
    manifest = world.craft([world.file("a"), world.file("a/b", like="b.jpg")])

    with pytest.raises((UnsafePath, IntegrityError), match="'a/b'"):
        world.restore(manifest)

    assert state_of(world.to) == {}


# ---- what is already under --to ----------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("with_folder_entry", [False, True], ids=["file-only", "folder-entry"])
def test_a_link_already_under_the_target_is_never_followed(
    world: World, force: bool, with_folder_entry: bool
) -> None:
    world.to.mkdir()
    (world.to / "sub").symlink_to(world.outside, target_is_directory=True)
    entries = [
        *_legit(world),
        *([world.folder("sub")] if with_folder_entry else []),
        world.file("sub/evil.jpg"),
    ]
    manifest = world.craft(entries)
    to_before, outside_before = state_of(world.to), state_of(world.outside)

    with pytest.raises(UnsafePath) as raised:
        world.restore(manifest, force=force)

    assert f"{world.to.resolve() / 'sub'} is a symbolic link" in str(raised.value)
    assert to_before == {"sub": ("link", str(world.outside))}
    assert_nothing_written(world, to_before, outside_before)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_link_at_the_place_of_a_file_is_not_written_through(world: World, force: bool) -> None:
    world.to.mkdir()
    (world.to / "logo").symlink_to(world.outside / "keep.txt")
    manifest = world.craft([*_legit(world), world.file("logo")])
    to_before, outside_before = state_of(world.to), state_of(world.outside)

    with pytest.raises(UnsafePath, match="logo is a symbolic link"):
        world.restore(manifest, force=force)

    assert_nothing_written(world, to_before, outside_before)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("with_folder_entry", [False, True], ids=["file-only", "folder-entry"])
def test_a_file_in_the_way_of_a_folder_is_refused(world: World, with_folder_entry: bool, force: bool) -> None:
    world.to.mkdir()
    (world.to / "sub").write_bytes(b"not a folder")
    entries = [*_legit(world), *([world.folder("sub")] if with_folder_entry else []), world.file("sub/x.jpg")]
    manifest = world.craft(entries)
    to_before, outside_before = state_of(world.to), state_of(world.outside)

    with pytest.raises((UnsafePath, RestoreRefused)) as raised:
        world.restore(manifest, force=force)

    assert f"{world.to.resolve() / 'sub'}" in str(raised.value)
    assert_nothing_written(world, to_before, outside_before)


# ---- content that does not match the snapshot ---------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [{"sha256": "0" * 64}, {"size": 3003}],
    ids=["wrong-sha256", "wrong-size"],
)
def test_a_file_whose_content_does_not_match_its_entry_never_reaches_its_name(
    world: World, changes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad file is the last and the slowest: the restore must wait for it and fail."""
    manifest = world.craft([*_legit(world), world.file("c.jpg", **changes)])
    outside_before = state_of(world.outside)
    write_file = files_restore.write_file

    def slow_write(repo: Repository, entry: Entry, target: Path) -> int:
        if entry.path == "c.jpg":
            time.sleep(0.2)
        return write_file(repo, entry, target)

    monkeypatch.setattr(files_restore, "write_file", slow_write)

    with pytest.raises(IntegrityError, match=r"c\.jpg does not match its snapshot"):
        world.restore(manifest)

    assert not (world.to / "c.jpg").exists()
    assert partial_writes(world.to) == []
    assert state_of(world.outside) == outside_before


def test_a_damaged_pack_fails_the_restore_and_leaves_no_damaged_file(world: World) -> None:
    pack, offset, length = world.blob_of("shoes/red.jpg")
    flip_byte(pack, offset + length // 2)
    manifest = world.backup()

    with pytest.raises(IntegrityError):
        world.restore(manifest)

    assert not (world.to / "shoes" / "red.jpg").exists()
    assert partial_writes(world.to) == []
    written = [p for p, s in state_of(world.to).items() if s[0] == "file"]
    for path in written:
        assert (world.to / path).read_bytes() == (world.source / path).read_bytes()


# ---- through the command line -----------------------------------------------------------------


def _cli_forgeries(w: World) -> dict[str, tuple[str, int, str]]:
    """Forged snapshots by name: their id, the exit code and the words the error must carry."""
    return {
        "through-link": (
            w.craft_id([*_legit(w), w.link("link", str(w.outside)), w.file("link/evil.jpg")]),
            1,
            "'link/evil.jpg' passes through the symbolic link 'link'",
        ),
        "twice": (w.craft_id([*_legit(w), w.file("b.jpg")]), 3, "'b.jpg' twice or out of order"),
        "dot-dot": (w.craft_id([*_legit(w)], [w.file("../outside/evil.jpg")]), 1, "'../outside/evil.jpg'"),
    }


def test_the_command_line_refuses_forged_snapshots_and_writes_nothing(tmp_path: Path) -> None:
    shop = Shop(tmp_path / "shop")
    shop.init()
    repo = Repository.open(LocalBackend(shop.repository), shop.key_file)
    world = make_world(tmp_path, opened=(repo, shop.key_file))
    outside_before = state_of(world.outside)

    for case, (snapshot_id, code, words) in _cli_forgeries(world).items():
        proc = shop.run(
            "restore",
            snapshot_id,
            "--to",
            str(world.to),
            env={"CAPSULE_UPLOADS": str(world.source)},
            expect=None,
        )
        assert proc.returncode == code, case
        assert words in one_line_error(proc), case
        assert_nothing_written(world, {}, outside_before)


# ---- legitimate links -------------------------------------------------------------------------


def test_links_are_restored_as_links_and_nothing_is_written_through_them(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"shared\n")
    links = {
        "logo": "/etc/hostname",
        "shelf": str(outside),
        "shoes/keep": "../../shared/keep.txt",
        "dangling": "/nonexistent/capsule/target",
    }
    for path, target in links.items():
        (source / path).symlink_to(target)
    hostname = Path("/etc/hostname")
    hostname_before = os.stat(hostname) if hostname.exists() else None
    world = make_world(tmp_path / "w", source)
    manifest = world.backup()
    outside_before = state_of(outside)

    done = world.restore(manifest)

    assert done.symlinks == len(links)
    for path, target in links.items():
        assert (world.to / path).is_symlink()
        assert os.readlink(world.to / path) == target
    assert state_of(outside) == outside_before
    assert (os.stat(hostname) if hostname.exists() else None) == hostname_before

    # Again: the links are found in place and left alone.
    again = world.restore(manifest)
    assert again.already_there == len(links) + 4
    for path, target in links.items():
        assert os.readlink(world.to / path) == target

    # A file at a link's place is replaced by the link with --force, never written through.
    (world.to / "logo").unlink()
    (world.to / "logo").write_bytes(b"a file now")
    with pytest.raises(RestoreRefused, match="logo already exists"):
        world.restore(manifest)
    world.restore(manifest, force=True)
    assert os.readlink(world.to / "logo") == "/etc/hostname"

    # A folder at a link's place is never replaced, even with --force.
    (world.to / "shelf").unlink()
    (world.to / "shelf" / "mine").mkdir(parents=True)
    with pytest.raises(RestoreRefused, match="shelf already exists"):
        world.restore(manifest, force=True)
    assert (world.to / "shelf" / "mine").is_dir()
    assert state_of(outside) == outside_before
    assert (os.stat(hostname) if hostname.exists() else None) == hostname_before


# ---- --include, metadata, empty things ---------------------------------------------------------


@pytest.fixture
def shop_tree(tmp_path: Path) -> World:
    source = tmp_path / "uploads"
    for path, data in {
        "top.jpg": JPEG + b"top",
        "shoes/red.jpg": JPEG + b"red",
        "shoes/blue.png": b"\x89PNG\r\n\x1a\nblue",
        "shoes/kids/small.jpg": JPEG + b"small",
        "bags/tote.jpg": JPEG + b"tote",
        "bags/empty.txt": b"",
    }.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    (source / "empty-folder").mkdir()
    for path, mode in {"top.jpg": 0o640, "shoes/red.jpg": 0o600, "shoes/kids/small.jpg": 0o755}.items():
        os.chmod(source / path, mode)
    for n, path in enumerate(["top.jpg", "shoes/red.jpg", "bags/empty.txt", "shoes/kids/small.jpg"]):
        os.utime(source / path, ns=(OLD_NS + n, OLD_NS + n))
    # Folders last, deepest first: writing in a folder changes its time.
    for n, (path, mode) in enumerate(
        {"shoes/kids": 0o700, "shoes": 0o750, "bags": 0o711, "empty-folder": 0o710}.items()
    ):
        os.chmod(source / path, mode)
        os.utime(source / path, ns=(OLD_NS - 10**9 * (n + 1), OLD_NS - 10**9 * (n + 1)))
    return make_world(tmp_path, source)


def test_a_whole_restore_brings_back_modes_times_and_empty_things(shop_tree: World) -> None:
    manifest = shop_tree.backup()

    done = shop_tree.restore(manifest)

    assert state_of(shop_tree.to) == state_of(shop_tree.source)
    assert (done.files, done.dirs, done.symlinks, done.already_there) == (6, 4, 0, 0)
    assert done.bytes == sum(len(p.read_bytes()) for p in shop_tree.source.rglob("*") if p.is_file())
    assert stat.S_IMODE(os.stat(shop_tree.to / "shoes").st_mode) == 0o750
    assert os.stat(shop_tree.to / "shoes" / "red.jpg").st_mtime_ns == OLD_NS + 1
    assert (shop_tree.to / "bags" / "empty.txt").read_bytes() == b""
    assert list((shop_tree.to / "empty-folder").iterdir()) == []


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        (["shoes/*.jpg"], ["shoes/red.jpg"]),
        (["**/*.jpg"], ["bags/tote.jpg", "shoes/kids/small.jpg", "shoes/red.jpg", "top.jpg"]),
        (["shoes/kids"], ["shoes/kids/small.jpg"]),
        (["/bags/", "top.jpg"], ["bags/empty.txt", "bags/tote.jpg", "top.jpg"]),
    ],
)
def test_include_restores_only_the_matching_files_with_their_folders(
    shop_tree: World, include: list[str], expected: list[str]
) -> None:
    manifest = shop_tree.backup()

    done = shop_tree.restore(manifest, include=include)

    files = sorted(p for p, s in state_of(shop_tree.to).items() if s[0] == "file")
    assert files == expected
    assert done.files == len(expected)
    for path in expected:
        assert (shop_tree.to / path).read_bytes() == (shop_tree.source / path).read_bytes()
        assert os.stat(shop_tree.to / path).st_mode == os.stat(shop_tree.source / path).st_mode
    folders = {str(Path(p).parent) for p in expected} - {"."}
    assert {p for p, s in state_of(shop_tree.to).items() if s[0] == "dir"} >= folders


def test_include_that_matches_nothing_is_refused_and_writes_nothing(shop_tree: World) -> None:
    manifest = shop_tree.backup()

    with pytest.raises(RestoreRefused, match="'hats/\\*'"):
        shop_tree.restore(manifest, include=["shoes/*.jpg", "hats/*"])

    assert state_of(shop_tree.to) == {}


# ---- files already under --to -----------------------------------------------------------------


def test_files_already_there_are_kept_and_different_ones_need_force(world: World) -> None:
    manifest = world.backup()
    world.restore(manifest)
    everything = state_of(world.to)
    inode = os.stat(world.to / "a.jpg").st_ino

    again = world.restore(manifest)
    assert again.already_there == 4
    assert state_of(world.to) == everything
    assert os.stat(world.to / "a.jpg").st_ino == inode

    (world.to / "shoes" / "red.jpg").write_bytes(b"edited since")
    (world.to / "b.jpg").unlink()
    with pytest.raises(RestoreRefused, match=r"red\.jpg already exists.*--force"):
        world.restore(manifest)
    assert (world.to / "shoes" / "red.jpg").read_bytes() == b"edited since"
    assert not (world.to / "b.jpg").exists()

    forced = world.restore(manifest, force=True)
    assert forced.already_there == 2  # a.jpg and shoes/blue.jpg
    assert state_of(world.to) == everything
    for path in ("a.jpg", "b.jpg", "shoes/red.jpg", "shoes/blue.jpg"):
        assert (world.to / path).read_bytes() == (world.source / path).read_bytes()


def test_a_folder_at_the_place_of_a_file_is_refused_even_with_force(world: World) -> None:
    manifest = world.backup()
    (world.to / "a.jpg").mkdir(parents=True)
    (world.to / "a.jpg" / "inside.txt").write_bytes(b"mine")
    before = state_of(world.to)

    with pytest.raises(RestoreRefused, match=r"a\.jpg already exists"):
        world.restore(manifest, force=True)

    assert state_of(world.to) == before


def test_the_refusal_lists_a_few_clashes_and_counts_the_rest(tmp_path: Path) -> None:
    source = tmp_path / "uploads"
    source.mkdir()
    for n in range(CLASHES_SHOWN + 2):
        (source / f"{n}.jpg").write_bytes(JPEG + bytes([n]))
    world = make_world(tmp_path, source)
    manifest = world.backup()
    world.to.mkdir()
    for n in range(CLASHES_SHOWN + 2):
        (world.to / f"{n}.jpg").write_bytes(b"other")

    with pytest.raises(RestoreRefused) as raised:
        world.restore(manifest)

    message = str(raised.value)
    assert message.count("already exists") == CLASHES_SHOWN
    assert "and 2 more" in message


# ---- leftovers of an interrupted restore -------------------------------------------------------


def test_remove_partial_writes_removes_leftovers_and_nothing_else(world: World) -> None:
    to = world.to
    (to / "shoes").mkdir(parents=True)
    leftovers = [
        to / f".a.jpg{PARTIAL_MARK}1a2b3c4d",
        to / "shoes" / f".red.jpg{PARTIAL_MARK}00ff00ff",
    ]
    for path in leftovers:
        path.write_bytes(b"half a file")
    link_leftover = to / f".logo{PARTIAL_MARK}deadbeef"
    link_leftover.symlink_to(world.outside / "keep.txt")
    kept = {
        "a.jpg": b"restored",
        ".hidden": b"a hidden file of the shop",
        f"b.jpg{PARTIAL_MARK}1234": b"no leading dot: not ours",
        "shoes/.red.jpg": b"hidden, no mark",
    }
    for path, data in kept.items():
        (to / path).write_bytes(data)
    outside_before = state_of(world.outside)

    assert remove_partial_writes(to) == 3

    assert {p for p, s in state_of(to).items() if s[0] == "file"} == set(kept)
    assert not link_leftover.is_symlink()
    assert all(not p.exists() for p in leftovers)
    assert state_of(world.outside) == outside_before
    assert remove_partial_writes(to) == 0


def test_remove_partial_writes_removes_a_leftover_link_to_a_folder(world: World) -> None:
    world.to.mkdir()
    leftover = world.to / f".shelf{PARTIAL_MARK}deadbeef"
    leftover.symlink_to(world.outside, target_is_directory=True)

    assert remove_partial_writes(world.to) == 1
    assert not leftover.is_symlink()
    assert (world.outside / "keep.txt").exists()


# ---- cat ----------------------------------------------------------------------------------------


@pytest.fixture
def big_world(tmp_path: Path) -> World:
    source = make_source(tmp_path)
    (source / "big.bin").write_bytes(random.Random(7).randbytes(3 * 1024 * 1024 + 123))
    return make_world(tmp_path, source)


@pytest.mark.parametrize("path", ["a.jpg", "shoes/red.jpg", "big.bin", "/shoes/blue.jpg"])
def test_cat_writes_the_exact_bytes(big_world: World, path: str) -> None:
    out = io.BytesIO()

    entry = cat_file(reopen(big_world.repo, big_world.key_file), big_world.backup(), path, out)

    assert out.getvalue() == (big_world.source / path.lstrip("/")).read_bytes()
    assert entry.path == path.lstrip("/")
    if path == "big.bin":
        assert len(entry.blobs) >= 3


@pytest.mark.parametrize(("path", "blob"), [("a.jpg", 0), ("big.bin", 1), ("big.bin", -1)])
def test_cat_of_a_damaged_file_fails_and_writes_nothing(big_world: World, path: str, blob: int) -> None:
    loc = big_world.repo.index.lookup(bytes.fromhex(big_world.stored[path]["blobs"][blob]))
    assert loc is not None
    flip_byte(big_world.repo.backend.path_of("data", loc.pack_id), loc.offset + loc.length // 2)
    out = io.BytesIO()

    with pytest.raises(IntegrityError):
        cat_file(reopen(big_world.repo, big_world.key_file), big_world.backup(), path, out)

    assert out.getvalue() == b""


def test_cat_of_a_file_that_does_not_match_its_entry_fails_and_writes_nothing(world: World) -> None:
    manifest = world.craft([world.file("a.jpg", sha256="0" * 64)])
    out = io.BytesIO()

    with pytest.raises(IntegrityError, match=r"a\.jpg does not match its snapshot"):
        cat_file(reopen(world.repo, world.key_file), manifest, "a.jpg", out)

    assert out.getvalue() == b""


@pytest.mark.parametrize(("path", "words"), [("shoes", "is a folder"), ("hats/red.jpg", "there is no")])
def test_cat_of_something_that_is_not_a_file_is_refused(big_world: World, path: str, words: str) -> None:
    out = io.BytesIO()

    with pytest.raises(RestoreRefused, match=words):
        cat_file(reopen(big_world.repo, big_world.key_file), big_world.backup(), path, out)

    assert out.getvalue() == b""


def test_a_restored_entry_matches_what_the_backup_recorded(world: World) -> None:
    """The crafting helpers above start from what a real backup stores: check that they agree."""
    entries = list(iter_entries(world.repo, world.backup()))
    assert [e.path for e in entries] == ["a.jpg", "b.jpg", "shoes", "shoes/blue.jpg", "shoes/red.jpg"]
    assert Entry.model_validate(world.file("c.jpg")).sha256 == entries[0].sha256
    assert world.restore(world.craft([world.file("c.jpg")])).files == 1
    assert (world.to / "c.jpg").read_bytes() == (world.source / "a.jpg").read_bytes()


# ---- through the worker processes -----------------------------------------------------------------


@pytest.fixture
def through_workers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Restores of any size go to two worker processes, as large ones do."""
    monkeypatch.setattr(files_restore, "POOL_MIN_BYTES", 0)
    return {"workers": 2}


def test_worker_processes_restore_the_same_tree(shop_tree: World, through_workers: dict[str, Any]) -> None:
    done = shop_tree.restore(shop_tree.backup(), **through_workers)

    assert state_of(shop_tree.to) == state_of(shop_tree.source)
    assert done.files > 0 and partial_writes(shop_tree.to) == []


def test_worker_processes_never_put_a_damaged_file_in_place(
    world: World, through_workers: dict[str, Any]
) -> None:
    pack, offset, length = world.blob_of("shoes/red.jpg")
    flip_byte(pack, offset + length // 2)

    with pytest.raises(IntegrityError):
        world.restore(world.backup(), **through_workers)

    assert not (world.to / "shoes" / "red.jpg").exists()
    assert partial_writes(world.to) == []
    for path in [p for p, s in state_of(world.to).items() if s[0] == "file"]:
        assert (world.to / path).read_bytes() == (world.source / path).read_bytes()


@pytest.mark.parametrize("changes", [{"sha256": "0" * 64}, {"size": 1}], ids=["sha256", "size"])
def test_worker_processes_refuse_content_that_does_not_match_its_entry(
    world: World, changes: dict[str, Any], through_workers: dict[str, Any]
) -> None:
    manifest = world.craft([*_legit(world), world.file("c.jpg", **changes)])

    with pytest.raises(IntegrityError, match=r"c\.jpg does not match its snapshot"):
        world.restore(manifest, **through_workers)

    assert not (world.to / "c.jpg").exists()
    assert partial_writes(world.to) == []


def test_remove_partial_writes_tells_this_process_from_one_that_is_gone(world: World) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    world.to.mkdir()
    mine = world.to / f".a.jpg{PARTIAL_MARK}{os.getpid()}-1a2b3c4d"
    dead = world.to / f".b.jpg{PARTIAL_MARK}{gone.pid}-1a2b3c4d-7"
    older = world.to / f".c.jpg{PARTIAL_MARK}1a2b3c4d"  # no PID: whose it is cannot be told
    for path in (mine, dead, older):
        path.write_bytes(b"half a file")

    assert remove_partial_writes(world.to, owner="gone") == 1
    assert not dead.exists() and mine.exists() and older.exists()
    assert remove_partial_writes(world.to, owner="mine") == 1
    assert not mine.exists() and older.exists()
