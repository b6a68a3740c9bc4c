"""Plaintext copies are private: Capsule's own folders are 0700 and its files 0600, whatever umask
the shop's shell has, during a command (a process killed at a fault point leaves its files as they
were at that instant) and after it. A restored file gets its snapshot's mode once it is complete.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import FAST_STEPS, Shop, log_events

FAST = {
    **FAST_STEPS,
    # The backup's copy of the database goes to staging, where the walk can see it.
    "CAPSULE_COPY_IN_MEMORY": "false",
}
LIVE_MODE = 0o640  # group-readable: a copy Capsule keeps for itself must still be 0600


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask of a shell that makes new files readable by everyone (the usual default)."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """The permission bits of `root` and of everything below it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def not_private(root: Path, *, except_for: tuple[str, ...] = ()) -> dict[str, str]:
    """Every folder below `root` that is not 0700 and every file that is not 0600."""
    wrong = {}
    for relative, mode in modes(root).items():
        if relative in except_for:
            continue
        expected = 0o700 if (root / relative).is_dir() else 0o600
        if mode != expected:
            wrong[relative] = oct(mode)
    return wrong


def killed(shop: Shop, *args: str, point: str) -> None:
    proc = shop.run(*args, env={**FAST, "CAPSULE_FAULTS": point}, expect=None)
    assert proc.returncode == -signal.SIGKILL, f"{point} was not reached: {proc.returncode} {proc.stderr}"


def test_capsule_keeps_its_own_files_private_during_and_after_every_command(
    shop: Shop, tmp_path: Path, open_umask: None
) -> None:
    shop.database.chmod(LIVE_MODE)
    shop.run("backup", env=FAST, expect=0)
    assert not_private(shop.home) == {}

    # A WAL database is read where it lies (no copy at all), and a copy, where one is taken, is
    # unlinked while it is read: what a killed backup leaves must still be private.
    killed(shop, "backup", point="store:halfway")
    assert not_private(shop.home) == {}
    shop.run("worker", "--until-idle", env=FAST, expect=0)
    assert not_private(shop.home) == {}

    killed(shop, "restore", "latest", "--in-place", point="stage:halfway")
    assert list(shop.staging.glob(".restore-*.capsule-restore-*")), modes(shop.home)
    assert not_private(shop.home) == {}
    shop.run("worker", "--until-idle", env=FAST, expect=0)

    killed(shop, "restore", "latest", "--in-place", point="apply:checked")
    assert list(shop.staging.glob("restore-*")), modes(shop.home)
    assert list((shop.home / "safety").glob(".*.partial")), modes(shop.home)
    assert not_private(shop.home) == {}
    shop.run("worker", "--until-idle", env=FAST, expect=0)
    assert list((shop.home / "safety").iterdir())
    assert not_private(shop.home) == {}
    # The live database keeps its own mode, and so do the side files SQLite made beside it.
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in shop.database.parent.iterdir()} == {
        p.name: oct(LIVE_MODE) for p in shop.database.parent.iterdir()
    }

    out = tmp_path / "restored"
    killed(shop, "restore", "latest", "--to", str(out), point="restore:halfway")
    assert list(out.glob(f".{shop.db_name}.capsule-restore-*")), modes(out)
    assert not_private(out) == {}
    shop.run("worker", "--until-idle", env=FAST, expect=0)
    # Complete and verified: the snapshot's mode. The folder made for it stays private.
    assert modes(out) == {".": 0o700, shop.db_name: LIVE_MODE}
    assert not_private(shop.home) == {}


def test_a_home_an_earlier_version_left_open_is_made_private_on_start(shop: Shop) -> None:
    shop.run("backup", expect=0)
    safety = shop.home / "safety"
    for folder in (shop.staging, safety):
        folder.mkdir(exist_ok=True)
    (safety / "pos-before-restore-1.db").write_bytes(b"a copy of the shop's sales")
    for path in (shop.home, shop.staging, safety):
        path.chmod(0o755)
    for path in (shop.home / "events.db", safety / "pos-before-restore-1.db"):
        path.chmod(0o644)

    proc = shop.run("jobs", expect=0)

    assert not_private(shop.home) == {}
    [said] = [e for e in log_events(proc.stderr) if e["event"] == "made Capsule's own files private"]
    assert said["count"] == 5, said


def test_a_restore_into_a_shared_folder_writes_its_temporary_file_private(
    shop: Shop, tmp_path: Path, open_umask: None
) -> None:
    shop.run("backup", env=FAST, expect=0)
    out = tmp_path / "shared"
    out.mkdir(mode=0o755)
    out.chmod(0o755)

    killed(shop, "restore", "latest", "--to", str(out), point="restore:halfway")

    [partial] = out.glob(f".{shop.db_name}.capsule-restore-*")
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # the shop's own folder is left as it was
