"""A database that is not one is refused before anything is copied: one sentence each, no snapshot.

SQLite opens an empty file as a new, empty database, so without a check of its own Capsule would
back up a 0-byte file as a 4 KiB snapshot, and that snapshot would become `latest-database`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from tests.integration.helpers import (
    CAPSULE,
    Shop,
    describe,
    one_line_error,
    sha256_file,
    side_files,
    unreadable_runner,
)


def _jobs(shop: Shop) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    return rows


def _refused(shop: Shop, proc: subprocess.CompletedProcess[str], snapshots_before: int) -> str:
    """The one-line error of a refused backup, once it is checked that nothing was stored."""
    assert proc.returncode == 1, describe(proc)
    message = one_line_error(proc)
    assert len(shop.snapshots()) == snapshots_before
    assert _jobs(shop)[0]["status"] == "failed"
    assert shop.leftover_copies() == []
    return message


def test_an_empty_database_file_is_refused_and_latest_stays_the_last_good_snapshot(shop: Shop) -> None:
    good = shop.backup()
    shop.database.write_bytes(b"")

    proc = shop.run("backup", "--kind", "database")

    message = _refused(shop, proc, 1)
    assert f"the database {shop.database} is empty (0 bytes)" in message
    assert "CAPSULE_DATABASE" in message
    assert shop.database.stat().st_size == 0 and side_files(shop.database) == []
    assert [s["snapshot_id"] for s in shop.snapshots()] == [good["snapshot_id"]]  # still latest-database


@pytest.mark.parametrize(
    "content",
    [
        b"remember to order receipt paper\n" * 200,
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(5000),
        b"SQLite",
    ],
    ids=["text", "image", "shorter-than-a-header"],
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(shop: Shop, content: bytes) -> None:
    shop.database.write_bytes(content)
    before = sha256_file(shop.database)

    message = _refused(shop, shop.run("backup", "--kind", "database"), 0)

    assert f"{shop.database} is not an SQLite database" in message
    assert "CAPSULE_DATABASE" in message
    assert sha256_file(shop.database) == before and side_files(shop.database) == []


def test_a_folder_is_refused_as_a_folder_not_as_missing(shop: Shop) -> None:
    folder = shop.root / "data"

    message = _refused(shop, shop.run("backup", env={"CAPSULE_DATABASE": str(folder)}), 0)

    assert f"{folder} is a folder, not a database file" in message
    assert "does not exist" not in message and "CAPSULE_DATABASE" in message


def test_a_database_this_user_cannot_read_is_refused(shop: Shop) -> None:
    prefix = unreadable_runner(shop.database)
    try:
        proc = subprocess.run(
            [*prefix, *CAPSULE, "backup", "--kind", "database"],
            cwd=shop.root,
            env=shop.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.chmod(shop.database, 0o600)
    assert "Traceback" not in proc.stderr, describe(proc)

    message = _refused(shop, proc, 0)

    assert f"the database {shop.database} cannot be read by this user" in message
    assert side_files(shop.database) == []


def test_a_database_that_shrank_to_a_fraction_of_its_last_snapshot_is_backed_up_with_a_warning(
    shop: Shop,
) -> None:
    first = shop.backup()
    conn = sqlite3.connect(shop.database)
    try:
        conn.execute("DELETE FROM sale_items")
        conn.execute("DELETE FROM sales")
        conn.execute("DELETE FROM customers")
        conn.commit()
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    assert shop.database.stat().st_size * 10 < first["totals"]["bytes"]

    proc = shop.run("backup", "--kind", "database", expect=3)

    assert "1 warning(s):" in proc.stderr
    status = json.loads(shop.run("status", "--json", expect=0).stdout)
    (warning,) = status["last_backup_warnings"]["items"]
    assert f"under 10% of its last snapshot {first['snapshot_id'][:12]}" in warning
    text = shop.run("status", expect=0).stdout
    assert f"! {warning}" in text
    # A database that changed as shops' do is backed up without a word.
    shop.backup()
    assert json.loads(shop.run("status", "--json", expect=0).stdout)["last_backup_warnings"] is None
