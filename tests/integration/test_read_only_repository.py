"""A repository that cannot be written: a USB disk or a NAS snapshot mounted read-only, or a share
this user may only read. Reading commands work without a lock and say so; writing ones refuse in one
sentence.

The read-only repositories are real bind mounts (`mount -o remount,ro,bind`), which need root: without
it the tests skip on a developer's machine and fail in CI, like a test whose server is missing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.repository.lock import lock_record, process_start_time
from tests.integration.helpers import (
    CAPSULE,
    Shop,
    describe,
    file_content_digest,
    log_events,
    one_line_error,
    sales_count,
)
from tests.integration.uploads import describe_tree, make_uploads
from tests.servers import in_ci

NOTICE = "reading it without a lock"
# One attempt: a backup job would otherwise retry with backoff before it fails.
ONE_ATTEMPT = {"CAPSULE_LOCK_WAIT_SECONDS": "0", "CAPSULE_STEP_MAX_ATTEMPTS": "1"}


def cannot_test(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI must run the tests of read-only repositories", pytrace=False)
    pytest.skip(reason)


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Mount `folder` over itself, read-only, for the block."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        cannot_test("mounting a read-only copy needs root and `mount`")
    bound = _mount("--bind", str(folder), str(folder))
    if bound.returncode:
        cannot_test(f"cannot bind-mount {folder}: {bound.stderr.strip()}")
    try:
        remounted = _mount("-o", "remount,ro,bind", str(folder))
        if remounted.returncode:
            cannot_test(f"cannot remount {folder} read-only: {remounted.stderr.strip()}")
        with pytest.raises(OSError) as refused:
            (folder / "probe").write_bytes(b"")
        assert refused.value.errno == errno.EROFS
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def files_env(shop: Shop) -> dict[str, str]:
    return {"CAPSULE_UPLOADS": str(shop.root / "uploads")}


def notices(stderr: str) -> list[dict[str, Any]]:
    return [e for e in log_events(stderr) if NOTICE in str(e.get("event", ""))]


def said_once(proc: subprocess.CompletedProcess[str], shop: Shop) -> None:
    found = notices(proc.stderr)
    assert len(found) == 1, describe(proc)
    assert found[0]["repository"] == str(shop.repository), found[0]
    assert "prunes" in found[0]["event"], found[0]


def write_lock(shop: Shop, *, pid: int, process_start: str | None, exclusive: bool) -> Path:
    path = shop.repository / "locks" / os.urandom(16).hex()
    path.write_bytes(lock_record(pid, process_start, exclusive, "rebuild-index"))
    return path


def dead_pid() -> tuple[int, str | None]:
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


@pytest.fixture
def backed_up(shop: Shop) -> Shop:
    """A shop whose repository holds a database snapshot and an images snapshot."""
    make_uploads(shop.root / "uploads")
    shop.run("backup", "--kind", "all", "--json", env=files_env(shop), expect=0)
    return shop


def test_restores_from_a_read_only_repository_read_without_a_lock_and_say_so_once(
    backed_up: Shop, tmp_path: Path
) -> None:
    shop = backed_up
    expected_content = file_content_digest(shop.database)
    expected_tree = describe_tree(shop.root / "uploads")
    with read_only(shop.repository):
        database = shop.restore("latest-database", tmp_path / "database", "--check")
        images = shop.run(
            "restore", "latest-files", "--to", str(tmp_path / "images"), env=files_env(shop), expect=0
        )

    assert file_content_digest(tmp_path / "database" / shop.db_name) == expected_content
    said_once(database, shop)
    assert describe_tree(tmp_path / "images") == expected_tree
    assert "Restored 6 files" in images.stdout
    said_once(images, shop)


def test_in_place_restore_from_a_read_only_repository_brings_the_snapshot_back(shop: Shop) -> None:
    shop.backup()
    before = sales_count(shop.database)
    conn = sqlite3.connect(shop.database)
    with conn:
        conn.execute("DELETE FROM sale_items WHERE sale_id = (SELECT MAX(id) FROM sales)")
        conn.execute("DELETE FROM sales WHERE id = (SELECT MAX(id) FROM sales)")
    conn.close()
    assert sales_count(shop.database) == before - 1

    with read_only(shop.repository):
        proc = shop.run("restore", "latest-database", "--in-place", expect=0)

    assert sales_count(shop.database) == before
    said_once(proc, shop)


def test_verify_reads_every_pack_of_a_read_only_repository_past_a_stale_lock(backed_up: Shop) -> None:
    shop = backed_up
    # The copy was taken while an index rebuild, long dead, held its lock: it cannot be removed now.
    pid, start = dead_pid()
    stale = write_lock(shop, pid=pid, process_start=start, exclusive=True)
    with read_only(shop.repository):
        proc = shop.run("verify", "--read-data", env=ONE_ATTEMPT, expect=0)

    assert "No problems found." in proc.stdout
    said_once(proc, shop)
    assert stale.exists()


def test_snapshots_and_cat_read_a_read_only_repository(backed_up: Shop, tmp_path: Path) -> None:
    shop = backed_up
    with read_only(shop.repository):
        rows = shop.snapshots()
        out = tmp_path / "notes.txt"
        proc = shop.cat("latest-files", "cat1/notes.txt", out, files_env(shop))

    assert sorted(r["kind"] for r in rows) == ["database", "files"]
    assert proc.returncode == 0, describe(proc)
    assert out.read_bytes() == (shop.root / "uploads" / "cat1" / "notes.txt").read_bytes()


def test_writing_commands_refuse_a_read_only_repository_in_one_sentence(backed_up: Shop) -> None:
    shop = backed_up
    pid, start = dead_pid()
    write_lock(shop, pid=pid, process_start=start, exclusive=True)
    with read_only(shop.repository):
        backup = shop.run("backup", env=ONE_ATTEMPT, expect=1)
        rebuild = shop.run("rebuild-index", env=ONE_ATTEMPT, expect=1)
        unlock = shop.run("unlock", expect=1)
        # Checking that the key opens the repository only reads it.
        shop.run("init", "--exist-ok", expect=0)
        rows = shop.snapshots()

    for proc, operation in ((backup, "backup"), (rebuild, "rebuild-index"), (unlock, "unlock")):
        message = one_line_error(proc)
        assert f"the repository at {shop.repository} is on a read-only file system" in message, message
        assert operation in message and "read-write" in message, message
        assert "Traceback" not in proc.stderr
    assert len(rows) == 2


def test_init_in_a_read_only_folder_says_it_is_read_only(bare_shop: Shop) -> None:
    shop = bare_shop
    shop.repository.mkdir(parents=True)
    with read_only(shop.repository):
        proc = shop.run("init", expect=1)

    message = one_line_error(proc)
    assert f"the repository at {shop.repository} is on a read-only file system" in message, message
    assert "init" in message
    assert not shop.key_file.exists()


# ---- a share this user may only read (EACCES, no mount) -------------------------------------

# Root without the capabilities that let it write (and read) other users' files, as any other user.
WITHOUT_OVERRIDE = "-dac_override,-dac_read_search"


def run_unprivileged(shop: Shop, *args: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        cannot_test("running Capsule without write access needs root and `setpriv`")
    assert setpriv is not None
    drop = [f"--inh-caps={WITHOUT_OVERRIDE}", f"--bounding-set={WITHOUT_OVERRIDE}"]
    proc = subprocess.run(
        [setpriv, *drop, "--", *CAPSULE, *args],
        cwd=shop.root,
        env=shop.env(ONE_ATTEMPT),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stderr, describe(proc)
    return proc


def test_a_user_who_may_only_read_the_repository_restores_from_it(shop: Shop, tmp_path: Path) -> None:
    sid = shop.backup()["snapshot_id"]
    expected = file_content_digest(shop.database)
    # The share belongs to another user, who lets everyone read it.
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(shop.repository)], check=True)
    subprocess.run(["chown", "-R", "nobody", str(shop.repository)], check=True)
    locks_before = sorted(os.listdir(shop.repository / "locks"))

    restored = run_unprivileged(shop, "restore", sid[:12], "--to", str(tmp_path / "restored"))
    backup = run_unprivileged(shop, "backup")

    assert restored.returncode == 0, describe(restored)
    assert file_content_digest(tmp_path / "restored" / shop.db_name) == expected
    said_once(restored, shop)
    message = one_line_error(backup)
    assert f"the repository at {shop.repository} cannot be written by this user" in message, message
    assert sorted(os.listdir(shop.repository / "locks")) == locks_before
    assert len(json.loads(shop.run("snapshots", "--json", expect=0).stdout)) == 1


def test_a_read_only_copy_that_lost_its_empty_folders_is_read_too(shop: Shop, tmp_path: Path) -> None:
    # Copies through tools that keep no empty folder (cloud sync, some archivers) have no locks/.
    shop.backup()
    shutil.rmtree(shop.repository / "locks")
    for empty in (shop.repository / "data").iterdir():
        if not any(empty.iterdir()):
            empty.rmdir()
    expected = file_content_digest(shop.database)
    with read_only(shop.repository):
        proc = shop.restore("latest", tmp_path / "restored")
        verify = shop.run("verify", expect=0)

    assert file_content_digest(tmp_path / "restored" / shop.db_name) == expected
    said_once(proc, shop)
    said_once(verify, shop)
    # Writable again, the copy gets the folders back as it needs them.
    shop.backup("--full")
    assert (shop.repository / "locks").is_dir()
    assert len(shop.snapshots()) == 2


def test_a_lock_this_user_cannot_read_is_respected_as_held(shop: Shop) -> None:
    shop.backup()
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(shop.repository)], check=True)
    # The share's owner is running something; its lock file is readable by the owner alone.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock = write_lock(
            shop, pid=sleeper.pid, process_start=process_start_time(sleeper.pid), exclusive=True
        )
        os.chmod(lock, 0o600)
        subprocess.run(["chown", "-R", "nobody", str(shop.repository)], check=True)

        held = run_unprivileged(shop, "verify")
        lock.unlink()
        free = run_unprivileged(shop, "verify")
    finally:
        sleeper.kill()
        sleeper.wait()

    assert held.returncode == 4, describe(held)
    assert "the repository is in use" in one_line_error(held)
    assert free.returncode == 0, describe(free)
    said_once(free, shop)
