"""Tightening a home an earlier version left open: Capsule's own files only, never through a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsule.orchestrator.private import tighten


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "safety").mkdir(parents=True)
    (home / "safety" / "pos-before-restore-1.db").write_bytes(b"sales")
    (home / "events.db").write_bytes(b"events")
    for path, bits in ((home, 0o755), (home / "safety", 0o755), (home / "events.db", 0o644)):
        path.chmod(bits)
    (home / "safety" / "pos-before-restore-1.db").chmod(0o644)
    return home


def test_an_open_home_and_everything_in_it_lose_group_and_other_permissions(open_home: Path) -> None:
    tightened = tighten(open_home)

    assert {str(p.relative_to(open_home)) for p in tightened} == {
        ".",
        "events.db",
        "safety",
        "safety/pos-before-restore-1.db",
    }
    assert [mode(p) for p in (open_home, open_home / "safety")] == [0o700, 0o700]
    assert mode(open_home / "events.db") == mode(open_home / "safety" / "pos-before-restore-1.db") == 0o600
    assert tighten(open_home) == []  # once


def test_a_home_reached_through_a_link_is_tightened(open_home: Path, tmp_path: Path) -> None:
    link = tmp_path / "capsule"
    link.symlink_to(open_home)

    tighten(link)

    assert mode(open_home) == 0o700
    assert mode(open_home / "events.db") == 0o600


def test_a_link_inside_the_home_is_not_followed(open_home: Path, tmp_path: Path) -> None:
    shop_file = tmp_path / "pos.db"
    shop_file.write_bytes(b"the shop's own")
    shop_file.chmod(0o644)
    (open_home / "safety" / "elsewhere").symlink_to(shop_file)
    shop_folder = tmp_path / "images"
    shop_folder.mkdir(mode=0o755)
    shop_folder.chmod(0o755)
    (open_home / "images").symlink_to(shop_folder)

    tighten(open_home)

    assert mode(shop_file) == 0o644
    assert mode(shop_folder) == 0o755
    assert mode(open_home / "safety") == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_of_another_user_is_left_as_it_is(open_home: Path) -> None:
    theirs = open_home / "safety" / "theirs.db"
    theirs.write_bytes(b"not ours")
    theirs.chmod(0o644)
    os.chown(theirs, 12345, 12345)

    tighten(open_home)

    assert mode(theirs) == 0o644
    assert mode(open_home / "events.db") == 0o600
