"""Setuid and setgid bits from a snapshot come back only when the restore asks for them.

A program that runs as its owner is a way in for whoever wrote the snapshot: a restore gives
back every other permission bit, and these two only with `capsule restore --special-bits`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.files import restore as files_restore
from tests.integration.helpers import Shop, one_line_error
from tests.integration.test_files_restore import make_world

SETUID_PROGRAM = 0o4755
SETGID_FOLDER = 0o2775
STICKY_FOLDER = 0o1777


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def make_special_uploads(folder: Path) -> None:
    (folder / "tools").mkdir(parents=True)
    (folder / "tools" / "resize").write_bytes(b"#!/bin/sh\necho resized\n")
    os.chmod(folder / "tools" / "resize", SETUID_PROGRAM)
    (folder / "shared").mkdir()
    (folder / "shared" / "logo.jpg").write_bytes(b"\xff\xd8\xff\xe0logo")
    os.chmod(folder / "shared", SETGID_FOLDER)
    (folder / "drop").mkdir()
    os.chmod(folder / "drop", STICKY_FOLDER)
    (folder / "plain.jpg").write_bytes(b"\xff\xd8\xff\xe0plain")
    os.chmod(folder / "plain.jpg", 0o640)


def test_a_restore_clears_setuid_and_setgid_unless_special_bits_asks_for_them(
    shop: Shop, tmp_path: Path
) -> None:
    uploads = shop.root / "uploads"
    make_special_uploads(uploads)
    env = {"CAPSULE_UPLOADS": str(uploads)}
    backup: dict[str, Any] = json.loads(
        shop.run("backup", "--kind", "files", "--json", env=env, expect=0).stdout
    )
    assert mode_of(uploads / "tools" / "resize") == SETUID_PROGRAM  # the bit really is there

    plain = shop.run("restore", backup["snapshot_id"], "--to", str(tmp_path / "plain"), env=env, expect=0)
    kept = shop.run(
        "restore", backup["snapshot_id"], "--to", str(tmp_path / "kept"), "--special-bits", env=env, expect=0
    )

    assert mode_of(tmp_path / "plain" / "tools" / "resize") == 0o755
    assert mode_of(tmp_path / "plain" / "shared") == 0o775
    assert mode_of(tmp_path / "plain" / "drop") == STICKY_FOLDER
    assert mode_of(tmp_path / "plain" / "plain.jpg") == 0o640
    assert "setuid or setgid bit of 2 files or folders was not restored" in plain.stdout
    assert "--special-bits" in plain.stdout
    assert mode_of(tmp_path / "kept" / "tools" / "resize") == SETUID_PROGRAM
    assert mode_of(tmp_path / "kept" / "shared") == SETGID_FOLDER
    assert mode_of(tmp_path / "kept" / "drop") == STICKY_FOLDER
    assert "was not restored" not in kept.stdout
    assert "--special-bits" in shop.run("restore", "--help", expect=0).stdout


def test_a_database_restore_clears_a_setuid_bit_unless_asked(shop: Shop, tmp_path: Path) -> None:
    os.chmod(shop.database, 0o4640)
    snapshot = shop.backup()["snapshot_id"]

    shop.restore(snapshot, tmp_path / "plain")
    shop.restore(snapshot, tmp_path / "kept", "--special-bits")

    assert mode_of(tmp_path / "plain" / shop.db_name) == 0o640
    assert mode_of(tmp_path / "kept" / shop.db_name) == 0o4640


@pytest.mark.parametrize("special_bits", [False, True], ids=["cleared", "asked"])
def test_worker_processes_clear_the_bits_as_threads_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, special_bits: bool
) -> None:
    source = tmp_path / "uploads"
    make_special_uploads(source)
    world = make_world(tmp_path / "w", source)
    monkeypatch.setattr(files_restore, "POOL_MIN_BYTES", 0)

    done = world.restore(world.backup(), workers=2, special_bits=special_bits)

    assert mode_of(world.to / "tools" / "resize") == (SETUID_PROGRAM if special_bits else 0o755)
    assert mode_of(world.to / "shared") == (SETGID_FOLDER if special_bits else 0o775)
    assert done.special_bits_cleared == (0 if special_bits else 2)


def test_special_bits_for_the_live_database_are_refused_with_one_sentence(shop: Shop) -> None:
    shop.backup()
    before = shop.database.read_bytes()

    proc = shop.run("restore", "latest-database", "--in-place", "--special-bits", expect=1)

    assert "--special-bits" in one_line_error(proc)
    assert "restore into a folder with --to" in one_line_error(proc)
    assert shop.database.read_bytes() == before
