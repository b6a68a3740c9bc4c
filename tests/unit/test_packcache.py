"""A restore's whole-pack copies (packcache): which packs are fetched whole, when a copy is removed,
how many are kept at once, and the folders a killed restore left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capsule.adapters.repository import packcache
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.adapters.repository.backends.storage import Kind
from capsule.adapters.repository.packcache import FOLDER_MARK, PackCache, copy_room, remove_abandoned

PACK = 1024


class CountingBackend(MemoryBackend):
    """A backend in memory that records each read: (name, offset, length)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, int, int | None]] = []

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.reads.append((name, offset, length))
        return super().read(kind, name, offset, length)


@pytest.fixture
def backend() -> CountingBackend:
    store = CountingBackend()
    for name in ("aa", "bb", "cc"):
        store.write("data", name, bytes(range(256)) * 4)  # 1,024 bytes a pack
    store.reads.clear()
    return store


def test_a_pack_the_restore_needs_most_of_is_fetched_once_and_removed_when_read(
    backend: CountingBackend, tmp_path: Path
) -> None:
    cache = PackCache(backend, tmp_path, PACK)
    cache.plan({"aa": 600})

    parts = [cache.read("aa", offset, 100) for offset in range(0, 600, 100)]

    assert backend.reads == [("aa", 0, None)]  # one request, the whole pack
    assert b"".join(parts) == (bytes(range(256)) * 4)[:600]
    assert (cache.fetched, cache.fetched_bytes) == (1, 1024)
    assert list(tmp_path.iterdir()) == []  # all it planned was read: the copy is gone
    assert cache.read("aa", 1000, 100) == bytes(range(256))[1000 - 768 :]  # past the plan: a range
    assert backend.reads[1:] == [("aa", 1000, 100)]


def test_a_pack_the_restore_needs_little_of_is_read_in_ranges(
    backend: CountingBackend, tmp_path: Path
) -> None:
    cache = PackCache(backend, tmp_path, PACK)
    cache.plan({"aa": cache.threshold - 1})

    cache.read("aa", 0, 100)
    cache.read("aa", 500, 100)
    cache.read("bb", 0, 10)  # not planned at all

    assert backend.reads == [("aa", 0, 100), ("aa", 500, 100), ("bb", 0, 10)]
    assert cache.fetched == 0 and list(tmp_path.iterdir()) == []


def test_packs_past_the_limit_are_read_in_ranges_until_a_copy_is_removed(
    backend: CountingBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packcache, "HELD_PACKS", 2)
    cache = PackCache(backend, tmp_path, PACK)
    cache.plan({"aa": 400, "bb": 400, "cc": 800})

    cache.read("aa", 0, 200)
    cache.read("bb", 0, 200)
    cache.read("cc", 0, 200)  # two copies are there already: a range
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aa", "bb"]
    cache.read("aa", 200, 200)  # aa is done: its copy goes
    cache.read("cc", 200, 200)  # now there is room for cc

    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb", "cc"]
    assert backend.reads == [("aa", 0, None), ("bb", 0, None), ("cc", 0, 200), ("cc", 0, None)]


def test_the_copies_take_at_most_half_the_space_the_restored_files_leave(
    backend: CountingBackend, tmp_path: Path
) -> None:
    assert copy_room(free=10_000, restored=4_000) == 3_000
    assert copy_room(free=4_000, restored=10_000) == 0
    cache = PackCache(backend, tmp_path, PACK, room=copy_room(free=5_000, restored=3_000))
    cache.plan({"aa": 1024})

    cache.read("aa", 0, 512)
    cache.read("aa", 512, 512)

    assert cache.fetched == 0 and list(tmp_path.iterdir()) == []  # no room for a copy: ranges
    assert backend.reads == [("aa", 0, 512), ("aa", 512, 512)]


def test_only_the_folders_of_restores_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = tmp_path / f"{FOLDER_MARK}{int(gone.stdout)}-abcd1234"
    alive = tmp_path / f"{FOLDER_MARK}{os.getpid()}-abcd1234"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "aa").write_bytes(b"pack")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"keep")
    link = tmp_path / f"{FOLDER_MARK}{int(gone.stdout)}-link"
    link.symlink_to(elsewhere)

    assert remove_abandoned(tmp_path) == 1

    assert not dead.exists() and (alive / "aa").exists()
    assert (elsewhere / "keep").exists() and link.is_symlink()
