"""The storage contract (capsule.adapters.repository.backends.storage), run against every backend.

A new backend (a Drive folder, a folder on a mounted disk) joins by adding one entry to BACKENDS:
a function that makes an empty store, ready for a repository, under a test's temporary folder.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from capsule.adapters.errors import ObjectNotFound, RepositoryLocked
from capsule.adapters.repository.backends import Backend, LocalPaths, local_paths, open_backend
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.adapters.repository.lock import RepositoryLock, is_stale, lock_record, locked, read_locks
from capsule.domain.errors import Category, UnsafePath


def _local(tmp_path: Path) -> Backend:
    backend = open_backend(tmp_path / "store" / "repo")
    backend.create_layout()
    return backend


def _memory(tmp_path: Path) -> Backend:
    backend = MemoryBackend("contract")
    backend.create_layout()
    return backend


def _gdrive(tmp_path: Path) -> Backend:
    """A Drive folder on the fake Drive server, through Google's real client libraries."""
    from capsule.adapters.repository.backends.gdrive import open_drive
    from tests.fakes.drive import shared_fake

    fake = shared_fake()
    fake.reset()  # one test at a time per process: what earlier tests stored is not needed
    backend = open_drive("contract", fake.credentials(), root_url=fake.url, chunk_size=1024 * 1024)
    backend.create_layout()
    return backend


def _gdrive_one_listing(tmp_path: Path) -> Backend:
    """The Drive folder answering from one listing held for the whole test (as `capsule sync` does)."""
    from capsule.adapters.repository.backends.gdrive import DriveBackend

    backend = _gdrive(tmp_path)
    assert isinstance(backend, DriveBackend)
    ExitStack().enter_context(backend.one_listing())  # left held: the backend is the test's alone
    return backend


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "local": _local,
    "memory": _memory,
    "gdrive": _gdrive,
    "gdrive-one-listing": _gdrive_one_listing,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


HEX = "0123456789abcdef" * 4  # a 64-character name, as packs and snapshots have


def name(i: int) -> str:
    return f"{i:064x}"


# ---- whole objects ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["keys", "data", "index", "snapshots", "locks"])
def test_a_written_object_reads_back_whole(backend: Backend, kind: str) -> None:
    backend.write(kind, HEX, b"stored bytes")  # type: ignore[arg-type]
    assert backend.read(kind, HEX) == b"stored bytes"  # type: ignore[arg-type]
    assert backend.exists(kind, HEX)  # type: ignore[arg-type]
    assert backend.size(kind, HEX) == len(b"stored bytes")  # type: ignore[arg-type]


def test_the_config_is_one_object(backend: Backend) -> None:
    assert not backend.exists("config", "config")
    backend.write("config", "config", b'{"format": "x"}\n')
    assert backend.read("config", "config") == b'{"format": "x"}\n'
    assert backend.exists("config", "config")


def test_a_memoryview_is_stored_as_its_bytes_and_a_later_change_to_its_buffer_is_not(
    backend: Backend,
) -> None:
    buffer = bytearray(b"a" * 1000)
    backend.write("data", HEX, memoryview(buffer))
    buffer[:] = b"b" * 1000
    assert backend.read("data", HEX) == b"a" * 1000


def test_an_empty_object_is_stored(backend: Backend) -> None:
    backend.write("index", HEX, b"")
    assert backend.exists("index", HEX)
    assert backend.read("index", HEX) == b""
    assert backend.size("index", HEX) == 0
    assert backend.read_tail("index", HEX, 10) == (0, b"")
    assert list(backend.list("index")) == [HEX]


def test_a_large_object_reads_back_whole_and_in_ranges(backend: Backend) -> None:
    data = os.urandom(24 * 1024 * 1024 + 123)  # not a multiple of any block size
    backend.write("data", HEX, data)
    assert backend.size("data", HEX) == len(data)
    assert backend.read("data", HEX) == data
    middle = 16 * 1024 * 1024 - 5
    assert backend.read("data", HEX, middle, 1024 * 1024) == data[middle : middle + 1024 * 1024]
    assert backend.read_tail("data", HEX, 4096) == (len(data), data[-4096:])


# ---- ranges -------------------------------------------------------------------------------------
def test_ranges_read_what_a_file_read_would(backend: Backend) -> None:
    data = bytes(range(256)) * 4
    backend.write("data", HEX, data)
    assert backend.read("data", HEX, 10, 20) == data[10:30]
    assert backend.read("data", HEX, 1000) == data[1000:]
    assert backend.read("data", HEX, 0, 0) == b""
    assert backend.read("data", HEX, 1020, 100) == data[1020:], "a range past the end is cut short"
    assert backend.read("data", HEX, 5000, 10) == b"", "a range beyond the end is empty"


def test_a_negative_range_is_refused(backend: Backend) -> None:
    backend.write("data", HEX, b"0123456789")
    with pytest.raises(ValueError):
        backend.read("data", HEX, -1, 4)
    with pytest.raises(ValueError):
        backend.read("data", HEX, 0, -4)


def test_the_tail_of_an_object_shorter_than_asked_is_all_of_it(backend: Backend) -> None:
    backend.write("data", HEX, b"short")
    assert backend.read_tail("data", HEX, 100) == (5, b"short")
    assert backend.read_tail("data", HEX, 2) == (5, b"rt")


# ---- stat, list, remove -------------------------------------------------------------------------
def test_stat_gives_the_size_and_when_it_was_written(backend: Backend) -> None:
    before = time.time()
    backend.write("locks", HEX, b"12345")
    info = backend.stat("locks", HEX)
    assert info.size == 5
    assert before - 2 <= info.modified <= time.time() + 2


def test_listing_gives_each_kinds_names_and_no_other(backend: Backend) -> None:
    packs = {name(i * 7919) for i in range(300)}  # spread over many two-character prefixes
    for n in packs:
        backend.write("data", n, b"p")
    backend.write("index", name(1), b"i")
    backend.write("config", "config", b"c")
    assert set(backend.list("data")) == packs
    assert len(list(backend.list("data"))) == len(packs)
    assert list(backend.list("index")) == [name(1)]
    assert list(backend.list("snapshots")) == []


def test_removing_deletes_and_removing_a_missing_object_is_no_error(backend: Backend) -> None:
    backend.write("snapshots", HEX, b"s")
    backend.remove("snapshots", HEX)
    assert not backend.exists("snapshots", HEX)
    assert list(backend.list("snapshots")) == []
    backend.remove("snapshots", HEX)
    backend.remove("data", name(5))


# ---- replacing is atomic ------------------------------------------------------------------------
def test_writing_again_replaces_the_whole_object(backend: Backend) -> None:
    backend.write("index", HEX, b"a much longer first version")
    backend.write("index", HEX, b"short")
    assert backend.read("index", HEX) == b"short"
    assert backend.size("index", HEX) == 5
    assert list(backend.list("index")) == [HEX], "no temporary object is left to list"


def test_a_reader_sees_the_old_object_or_the_new_never_a_mix(backend: Backend) -> None:
    size = 2 * 1024 * 1024
    versions = [bytes([v]) * size for v in range(4)]
    backend.write("data", HEX, versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def replace() -> None:
        v = 0
        while not stop.is_set():
            v = (v + 1) % len(versions)
            backend.write("data", HEX, versions[v])

    writer = threading.Thread(target=replace)
    writer.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            data = backend.read("data", HEX)
            assert len(data) == size
            assert data.count(data[:1]) == size, "a read mixed two versions"
            seen.append(data[:1])
    finally:
        stop.set()
        writer.join()
    assert len(set(seen)) > 1, "the reads should have met more than one version"
    assert list(backend.list("data")) == [HEX]


# ---- missing objects ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.read("data", HEX),
        lambda b: b.read("data", HEX, 10, 10),
        lambda b: b.read_tail("data", HEX, 10),
        lambda b: b.size("data", HEX),
        lambda b: b.stat("data", HEX),
        lambda b: b.read("config", "config"),
    ],
    ids=["read", "range", "tail", "size", "stat", "config"],
)
def test_a_missing_object_is_not_found(backend: Backend, call: Callable[[Backend], object]) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        call(backend)
    assert caught.value.category is Category.NOT_FOUND
    assert isinstance(caught.value, FileNotFoundError)
    assert not backend.exists("data", HEX)


# ---- names --------------------------------------------------------------------------------------
ESCAPING = ["../x", "/abs", "a/b", "..", ".", "", ".tmp-1234", "x\x00y", "UPPER", "x" * 129, "a\\b"]


@pytest.mark.parametrize("bad", ESCAPING)
def test_a_name_that_is_not_an_objects_is_refused_before_the_store_is_touched(
    backend: Backend, bad: str, tmp_path: Path
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for call in (
        lambda: backend.write("keys", bad, b"escaped"),
        lambda: backend.write("data", bad, b"escaped"),
        lambda: backend.read("keys", bad),
        lambda: backend.exists("snapshots", bad),
        lambda: backend.size("index", bad),
        lambda: backend.remove("locks", bad),
    ):
        with pytest.raises(UnsafePath) as caught:
            call()
        assert caught.value.category is Category.REFUSED
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "abs").exists() and not Path("/abs").exists()


def test_an_unknown_kind_is_refused(backend: Backend) -> None:
    with pytest.raises(UnsafePath):
        backend.write("../keys", HEX, b"x")  # type: ignore[arg-type]
    with pytest.raises(UnsafePath):
        list(backend.list("elsewhere"))  # type: ignore[arg-type]


def test_the_location_is_described_for_messages(backend: Backend) -> None:
    where = backend.describe()
    assert where and "\n" not in where
    paths = local_paths(backend)
    if paths is not None:  # a local store names its folder
        assert str(paths.path_of("config", "config").parent) == where


# ---- what the locks need ------------------------------------------------------------------------
def test_shared_locks_coexist_and_an_exclusive_one_is_refused_while_they_are_held(backend: Backend) -> None:
    with locked(backend, "backup"), locked(backend, "restore", reading=True):
        assert len(read_locks(backend)) == 2
        assert {i.operation for i in read_locks(backend)} == {"backup", "restore"}
        with pytest.raises(RepositoryLocked, match="a shared lock for"):
            RepositoryLock(backend, True, "rebuild-index").acquire()
    assert read_locks(backend) == []
    with locked(backend, "rebuild-index", exclusive=True) as held:
        assert held.held
        with pytest.raises(RepositoryLocked, match="an exclusive lock for rebuild-index"):
            RepositoryLock(backend, False, "backup").acquire()
    assert list(backend.list("locks")) == []


def test_a_stale_lock_is_removed_and_logged(backend: Backend) -> None:
    record = lock_record(1, None, True, "prune", hostname="elsewhere", refreshed=time.time() - 7200)
    backend.write("locks", HEX, record)
    (info,) = read_locks(backend)
    assert is_stale(info)
    with capture_logs() as logs, locked(backend, "backup"):
        assert HEX not in set(backend.list("locks"))
    assert any(e["event"] == "removed a stale repository lock" for e in logs)


def test_an_unreadable_lock_conflicts_until_it_is_old(backend: Backend) -> None:
    backend.write("locks", HEX, b"{ not json")
    (info,) = read_locks(backend)
    assert info.exclusive and info.operation == "unreadable lock"
    assert abs(info.refreshed - backend.stat("locks", HEX).modified) < 1e-3
    with pytest.raises(RepositoryLocked, match="unreadable lock"):
        RepositoryLock(backend, False, "backup").acquire()


def test_only_a_backend_with_local_paths_says_it_has_them(backend: Backend) -> None:
    paths = local_paths(backend)
    assert (paths is not None) == isinstance(backend, LocalPaths)
    if paths is not None:
        backend.write("data", HEX, b"pack")
        assert paths.path_of("data", HEX).read_bytes() == b"pack"


def test_a_file_opened_once_reads_its_tail_and_ranges_and_a_missing_one_is_not_found(
    backend: Backend,
) -> None:
    paths = local_paths(backend)
    if paths is None:
        return  # the capability is a local backend's alone
    backend.write("data", HEX, b"0123456789")
    with paths.open_file("data", HEX) as opened:
        assert opened.size == 10
        assert (opened.tail(4), opened.tail(64)) == (b"6789", b"0123456789")
        assert (opened.read(2, 3), opened.read(8, 10)) == (b"234", b"89")
    with pytest.raises(ObjectNotFound), paths.open_file("data", "ab" * 32):
        pass
