"""How much a restore from a Drive copy asks of Drive (Google's real client, the fake Drive server).

Each read from Drive is an HTTP request with real latency: a database restore fetches each pack it
needs most of once, whole, into a temporary folder it removes afterwards, instead of reading it in
a few hundred small ranges; a restore of one small file still reads only that file's ranges.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.adapters.errors import IntegrityError
from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.restore import restore_files
from capsule.adapters.repository.backends.gdrive import DriveBackend, DriveCredentials, open_drive
from capsule.adapters.repository.lock import locked
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import locate_all, restore_snapshot
from capsule.adapters.sqlite.backup import backup_database
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.destinations import add_gdrive
from capsule.orchestrator.usecases.restore import Restore
from capsule.orchestrator.usecases.restore import restore_snapshot as restore_snapshot_from
from capsule.orchestrator.usecases.sync import Sync, sync
from tests.fakes.drive import FakeDrive, Sleeps
from tests.integration.helpers import (
    DatabaseTemplates,
    Shop,
    file_content_digest,
    in_process_settings,
    sha256_file,
)

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
PACK = 1024 * 1024


@dataclass
class Copy:
    fake: FakeDrive
    credentials: DriveCredentials
    key_file: Path
    database: Path
    db_snapshot: str
    files_snapshot: str
    images: dict[str, str]

    def reader(self) -> Repository:
        """The copy opened as a new machine opens it: another backend, its index read."""
        repo = Repository.open(drive(self.fake, self.credentials), self.key_file)
        repo.load_index(use_cache=False)
        return repo


def drive(fake: FakeDrive, credentials: DriveCredentials) -> DriveBackend:
    return open_drive("shop-offsite", credentials, root_url=fake.url, chunk_size=256 * 1024, sleep=Sleeps())


@pytest.fixture
def copy(tmp_path: Path, templates: DatabaseTemplates) -> Iterator[Copy]:
    """A 16 MiB database and five images backed up to a Drive folder in packs of 1 MiB."""
    database = templates.copy(tmp_path / "shop" / "pos.db", size_mib=16)
    (tmp_path / "shop" / "images").mkdir()
    images = {f"{i}.jpg": b"\xff\xd8" + os.urandom(100_000 + i) for i in range(5)}
    for name, data in images.items():
        (tmp_path / "shop" / "images" / name).write_bytes(data)
    staging = tmp_path / "staging"
    staging.mkdir()
    key_file = tmp_path / "home" / "repository.key"
    with FakeDrive() as fake:
        credentials = fake.credentials()
        repo = Repository.init(drive(fake, credentials), key_file, pack_size=PACK)
        with locked(repo.backend, "backup"):
            db = backup_database(repo, database, staging, now=NOW)
            files = backup_files(repo, tmp_path / "shop" / "images", now=NOW)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in images.items()}
        yield Copy(fake, credentials, key_file, database, db.snapshot_id, files.snapshot_id, digests)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_database_restored_from_drive_reads_each_pack_it_needs_in_one_request(
    copy: Copy, tmp_path: Path
) -> None:
    reader = copy.reader()
    manifest = reader.load_snapshot(copy.db_snapshot)
    packs = {f.name: len(f.content) for f in copy.fake.files.values() if f.name.startswith("data-")}
    to = tmp_path / "restored"
    with locked(reader.backend, "restore", reading=True):
        asked = len(copy.fake.requests)
        (restored,) = restore_snapshot(reader, manifest, to)
        during = copy.fake.requests[asked:]
        downloads = copy.fake.downloads(asked)

    assert len(packs) >= 6
    # One read a pack, and one listing of the folder finds their files: dozens of ranges before.
    assert len(downloads) <= len(packs) + 2, [r.sent for r in downloads]
    assert len(during) <= len(packs) + 4, [(r.method, r.path, r.sent) for r in during]
    assert sum(r.sent for r in downloads) <= sum(packs.values())  # no byte fetched twice
    assert sha256_file(restored.path) == manifest.entries[0].sha256 == restored.sha256
    assert file_content_digest(restored.path) == file_content_digest(copy.database)
    assert hidden(to) == []  # the packs fetched whole are gone with their folder


def test_one_image_restored_from_drive_reads_that_image_and_not_its_pack(copy: Copy, tmp_path: Path) -> None:
    reader = copy.reader()
    manifest = reader.load_snapshot(copy.files_snapshot)
    to = tmp_path / "one-image"
    with locked(reader.backend, "restore", reading=True):
        asked = len(copy.fake.requests)
        restore_files(reader, manifest, to, include=["2.jpg"])
        downloads = copy.fake.downloads(asked)

    assert [p.name for p in to.iterdir()] == ["2.jpg"]
    assert sha256_file(to / "2.jpg") == copy.images["2.jpg"]
    image = (to / "2.jpg").stat().st_size
    assert sum(r.sent for r in downloads) < image + PACK // 4, [r.sent for r in downloads]


def test_a_restore_from_drive_that_fails_leaves_no_fetched_pack_behind(copy: Copy, tmp_path: Path) -> None:
    reader = copy.reader()
    manifest = reader.load_snapshot(copy.db_snapshot)
    # A page three quarters into the database is damaged in Drive: the restore fetches packs whole
    # before it reaches that one, and fails there.
    pages = [loc for _, loc in locate_all(reader, manifest.entries[0])]
    page = pages[len(pages) * 3 // 4]
    assert page.pack_id != pages[0].pack_id
    (stored,) = copy.fake.named(f"data-{page.pack_id}")
    at = page.offset + page.length // 2
    stored.content = stored.content[:at] + bytes([stored.content[at] ^ 1]) + stored.content[at + 1 :]
    to = tmp_path / "restored"
    with locked(reader.backend, "restore", reading=True):
        asked = len(copy.fake.requests)
        with pytest.raises(IntegrityError):
            restore_snapshot(reader, manifest, to)
        downloads = copy.fake.downloads(asked)

    assert any(r.sent >= PACK // 2 for r in downloads)  # packs were fetched whole before it failed
    assert hidden(to) == []  # neither those packs nor the half-written database stay
    assert not (to / manifest.entries[0].path).exists()


@pytest.mark.parametrize("in_place", [False, True], ids=["to-a-folder", "in-place"])
def test_restore_from_a_drive_destination_fetches_the_pack_whole(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, in_place: bool
) -> None:
    settings = in_process_settings(shop)
    entry = back_up(settings, Backup(kind="database")).snapshots[0].manifest.entries[0]
    live = file_content_digest(shop.database)
    with FakeDrive() as fake:
        add_gdrive(settings, "drive", fake.client_config(), fake.credentials().refresh_token)
        monkeypatch.setenv("CAPSULE_GDRIVE_ROOT_URL", fake.url)
        [copied] = sync(settings, Sync("drive")).destinations
        assert copied.ok, copied.error
        packs = {f.id: f.name for f in fake.files.values() if f.name.startswith("data-")}
        asked = len(fake.requests)

        to = None if in_place else tmp_path / "out"
        restored = restore_snapshot_from(settings, Restore("latest-database", to=to, source="drive"))

        reads = [r for r in fake.downloads(asked) if r.path.rsplit("/", 1)[-1] in packs]
    # One request a pack, the whole of it: the pack of pages, and the pack of their lists.
    read = sorted(packs[r.path.rsplit("/", 1)[-1]] for r in reads)
    assert read == sorted(packs.values()) and len(packs) == 2, [r.sent for r in reads]
    if in_place:
        assert restored.in_place and file_content_digest(shop.database) == live
        assert hidden(settings.staging) == []
    else:
        [database] = restored.restored
        assert sha256_file(Path(database.path)) == database.sha256 == entry.sha256
        assert file_content_digest(Path(database.path)) == live
        assert hidden(tmp_path / "out") == []
