"""A whole repository in a Google Drive folder: the engine writes a backup through the Drive backend
(Google's real client, the fake Drive server), and another process that has only the Drive folder
and the key file restores it and verifies every pack."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.restore import restore_files
from capsule.adapters.repository.backends.gdrive import DriveBackend, DriveCredentials, open_drive
from capsule.adapters.repository.lock import locked
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.repository.verify import verify
from capsule.adapters.sqlite.backup import backup_database
from tests.fakes.drive import FakeDrive, Sleeps

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def make_shop(root: Path) -> dict[str, str]:
    (root / "images").mkdir(parents=True)
    conn = sqlite3.connect(root / "pos.db")
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE sales (id INTEGER PRIMARY KEY, note TEXT, body BLOB)")
    conn.executemany(
        "INSERT INTO sales (note, body) VALUES (?, randomblob(600))", [(f"s{i}",) for i in range(800)]
    )
    conn.commit()
    conn.close()
    images = {f"{i}.jpg": b"\xff\xd8" + os.urandom(150_000 + i) for i in range(5)}
    for name, data in images.items():
        (root / "images" / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in images.items()}


def sales(path: Path) -> list[tuple[int, str, bytes]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, note, body FROM sales ORDER BY id").fetchall()
    finally:
        conn.close()


def drive(fake: FakeDrive, credentials: DriveCredentials) -> DriveBackend:
    return open_drive("shop-offsite", credentials, root_url=fake.url, chunk_size=256 * 1024, sleep=Sleeps())


def test_a_backup_written_to_drive_is_restored_from_drive_alone(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    images = make_shop(shop)
    key_file = tmp_path / "home" / "repository.key"
    staging = tmp_path / "staging"
    staging.mkdir()
    with FakeDrive() as fake:
        credentials = fake.credentials()
        repo = Repository.init(drive(fake, credentials), key_file, pack_size=512 * 1024)
        with locked(repo.backend, "backup"):
            db = backup_database(repo, shop / "pos.db", staging, now=NOW)
            files = backup_files(repo, shop / "images", now=NOW)
        fake.fail(2, "server_error")  # the copy meets a bad minute of Drive's; it waits it out

        elsewhere = drive(fake, credentials)  # another process: no cache, a new connection
        reader = Repository.open(elsewhere, key_file)
        assert {name for name, _ in reader.snapshots()} == {db.snapshot_id, files.snapshot_id}
        with locked(reader.backend, "restore", reading=True):
            (restored,) = restore_snapshot(reader, reader.load_snapshot(db.snapshot_id), tmp_path / "db-to")
            restore_files(reader, reader.load_snapshot(files.snapshot_id), tmp_path / "images-to")
        assert sales(restored.path) == sales(shop / "pos.db")
        restored_images = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "images-to").iterdir()
        }
        assert restored_images == images

        report = verify(Repository.open(elsewhere, key_file), read_data=True)
        assert report.ok, report.problems
        packs = list(elsewhere.list("data"))
        assert report.packs == len(packs) >= 2
        assert {f.name for f in fake.files.values()} >= {"config", *(f"data-{p}" for p in packs)}
        assert not fake.sessions or all(s.file_id for s in fake.sessions.values()), "no upload left open"
