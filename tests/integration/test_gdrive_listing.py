"""`DriveBackend.one_listing`: one search of the repository folder answers for every kind within a
block, kept current by the backend's own writes and removes, and never beyond the block; locks are
always searched. Google's real client against the fake Drive (tests/fakes/drive.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capsule.adapters.repository.backends.gdrive import DriveBackend, open_drive
from tests.fakes.drive import FakeDrive

PACK = "ab" * 32


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


def drive(fake: FakeDrive) -> DriveBackend:
    return open_drive("shop", fake.credentials(), root_url=fake.url, chunk_size=1024 * 1024)


def searches(fake: FakeDrive, since: int) -> int:
    return sum(1 for r in fake.requests[since:] if (r.method, r.path) == ("GET", "/drive/v3/files"))


def test_one_search_answers_every_kind_and_the_backends_own_writes_and_removes_keep_it_current(
    fake: FakeDrive,
) -> None:
    writer = drive(fake)
    writer.write("config", "config", b"c")
    writer.write("keys", "k1", b"k")
    writer.write("data", PACK, b"pack")
    writer.write("eventlog", "g1", b"log")
    backend = drive(fake)
    asked = len(fake.requests)

    with backend.one_listing():
        assert searches(fake, asked) == 2  # the folder, then everything in it
        assert backend.exists("config", "config") and not backend.exists("index", PACK)
        assert (list(backend.list("keys")), list(backend.list("data"))) == (["k1"], [PACK])
        assert backend.stat("data", PACK).size == 4
        backend.write("keys", "k1", b"new key")  # replaces the older file without a search
        backend.write("snapshots", PACK, b"snap")
        backend.remove("eventlog", "g1")
        assert list(backend.list("snapshots")) == [PACK] and list(backend.list("eventlog")) == []
        assert backend.stat("keys", "k1").size == len(b"new key")
        assert searches(fake, asked) == 2
        assert fake.count("GET", "/drive/v3/files/") == 0  # no stat went to Drive either

    assert [f.content for f in fake.named("keys-k1") if not f.trashed] == [b"new key"]
    assert not [f for f in fake.named("eventlog-g1") if not f.trashed]
    assert backend.read("keys", "k1") == b"new key"


def test_another_process_write_is_seen_after_the_block_and_a_lock_at_once(fake: FakeDrive) -> None:
    other, backend = drive(fake), drive(fake)
    other.write("config", "config", b"c")
    with backend.one_listing():
        other.write("keys", "k2", b"k")
        other.write("locks", PACK, b"lock")
        assert list(backend.list("keys")) == []  # the listing is of the folder as it was
        assert list(backend.list("locks")) == [PACK]  # locks are how processes see each other
        assert backend.exists("locks", PACK)
    assert list(backend.list("keys")) == ["k2"]


def test_a_file_the_listing_named_that_was_replaced_since_is_read_in_its_new_version(fake: FakeDrive) -> None:
    other, backend = drive(fake), drive(fake)
    other.write("config", "config", b"first")
    with backend.one_listing():
        other.write("config", "config", b"second")  # the first file is deleted
        assert backend.read("config", "config") == b"second"


def test_a_listing_of_a_drive_without_the_folder_makes_it_once_on_the_first_write(fake: FakeDrive) -> None:
    backend = drive(fake)
    with backend.one_listing():
        assert list(backend.list("data")) == [] and not backend.exists("config", "config")
        backend.write("config", "config", b"c")
        backend.write("keys", "k1", b"k")
    assert searches(fake, 0) == 2  # the folder looked for once, and once more after making it
    assert fake.count("POST", "/drive/v3/files") == 1
    assert drive(fake).read("keys", "k1") == b"k"


def test_a_folder_another_process_made_while_the_listing_saw_none_is_used_and_looked_into(
    fake: FakeDrive,
) -> None:
    backend, other = drive(fake), drive(fake)
    with backend.one_listing():
        assert not backend.exists("config", "config")  # no folder yet
        other.write("config", "config", b"c")  # makes the folder first
        backend.write("keys", "k1", b"k")  # makes one, finds the older, and deletes its own
        assert backend.exists("config", "config")
        assert list(backend.list("keys")) == ["k1"]
    folders = [f for f in fake.named("shop") if not f.trashed]
    assert len(folders) == 1
