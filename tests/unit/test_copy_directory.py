"""Where the backup's copy of the database goes: RAM when it fits comfortably, else the staging folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsule.adapters.sqlite import backup as database_backup
from capsule.adapters.sqlite.backup import copy_directory


@pytest.fixture
def source(tmp_path: Path) -> Path:
    db = tmp_path / "pos.db"
    db.write_bytes(b"\0" * 64 * 1024)
    return db


def test_a_small_database_is_copied_into_a_private_folder_in_ram(tmp_path: Path, source: Path) -> None:
    ram = tmp_path / "shm"
    ram.mkdir()
    chosen = copy_directory(tmp_path / "staging", source, ram=ram)
    assert chosen == ram / f"capsule-{os.getuid()}"
    assert chosen.stat().st_mode & 0o777 == 0o700


def test_the_setting_keeps_the_copy_on_disk(tmp_path: Path, source: Path) -> None:
    ram = tmp_path / "shm"
    ram.mkdir()
    assert copy_directory(tmp_path / "staging", source, in_memory=False, ram=ram) == tmp_path / "staging"
    assert list(ram.iterdir()) == []


def test_a_database_larger_than_a_quarter_of_free_memory_stays_on_disk(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ram = tmp_path / "shm"
    ram.mkdir()
    monkeypatch.setattr(database_backup, "_mem_available", lambda: 4 * 64 * 1024 - 1)
    assert copy_directory(tmp_path / "staging", source, ram=ram) == tmp_path / "staging"


def test_the_wal_counts_towards_the_size(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ram = tmp_path / "shm"
    ram.mkdir()
    Path(f"{source}-wal").write_bytes(b"\0" * 64 * 1024)
    monkeypatch.setattr(database_backup, "_mem_available", lambda: 4 * 64 * 1024 * 2 - 1)
    assert copy_directory(tmp_path / "staging", source, ram=ram) == tmp_path / "staging"


def test_a_shared_folder_that_others_can_enter_is_not_used(tmp_path: Path, source: Path) -> None:
    ram = tmp_path / "shm"
    (ram / f"capsule-{os.getuid()}").mkdir(parents=True)
    (ram / f"capsule-{os.getuid()}").chmod(0o777)
    assert copy_directory(tmp_path / "staging", source, ram=ram) == tmp_path / "staging"


def test_a_symlink_in_place_of_the_private_folder_is_not_followed(tmp_path: Path, source: Path) -> None:
    ram = tmp_path / "shm"
    ram.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (ram / f"capsule-{os.getuid()}").symlink_to(elsewhere)
    assert copy_directory(tmp_path / "staging", source, ram=ram) == tmp_path / "staging"
