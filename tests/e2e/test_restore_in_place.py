"""`restore --in-place`: put an older snapshot back into the live database, keeping a safety copy."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from benchmarks import posdb
from tests.integration.helpers import Shop, file_content_digest, files_under, side_files

MARKER = "sale added after the snapshot"


def add_marked_sale(conn: sqlite3.Connection) -> int:
    with conn:
        cur = conn.execute(
            "INSERT INTO sales (customer_id, created_at, total_cents, payment_method, note) "
            "VALUES (NULL, '2026-01-01 10:00:00', 250, 'cash', ?)",
            (MARKER,),
        )
        sale_id = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO sale_items (sale_id, product_id, quantity, unit_price_cents, line_total_cents) "
            "VALUES (?, 1, 1, 250, 250)",
            (sale_id,),
        )
    return sale_id


def marked_sales(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM sales WHERE note = ?", (MARKER,)).fetchone()[0])


def test_in_place_restore_brings_back_the_snapshot_and_keeps_the_newer_database_aside(
    shop: Shop, tmp_path: Path
) -> None:
    # The till keeps its connection open the whole time, idle between sales.
    till = sqlite3.connect(shop.database, isolation_level=None, timeout=30)
    try:
        assert till.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        snapshot_content = file_content_digest(shop.database)
        sid = shop.backup()["snapshot_id"]
        add_marked_sale(till)
        assert marked_sales(till) == 1

        proc = shop.run("restore", sid[:10], "--in-place", expect=0)

        assert f"Restored snapshot {sid[:12]} into {shop.database}" in proc.stdout
        found = re.search(r"saved at (\S+)\.$", proc.stdout, re.MULTILINE)
        assert found, proc.stdout
        safety = Path(found.group(1))
        # The open connection sees the restored content on its next read.
        assert marked_sales(till) == 0
        assert till.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        till.close()

    assert file_content_digest(shop.database) == snapshot_content
    report = posdb.check_consistency(shop.database)
    assert report["consistent"], report

    assert safety.is_file()
    assert safety.parent == shop.home / "safety"
    assert side_files(safety) == []
    saved = sqlite3.connect(f"{safety.as_uri()}?immutable=1", uri=True)
    try:
        assert marked_sales(saved) == 1
        assert saved.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        saved.close()

    assert files_under(shop.staging) == []
    assert sorted(p.name for p in shop.database.parent.iterdir() if p.name != "pos.db") in (
        [],
        ["pos.db-shm", "pos.db-wal"],
    )


def test_in_place_restore_without_a_live_database_fails_and_creates_none(shop: Shop) -> None:
    shop.backup()
    shop.database.unlink()

    proc = shop.run("restore", "latest", "--in-place", expect=1)

    assert "does not exist" in proc.stderr
    assert not shop.database.exists() and side_files(shop.database) == []
    assert files_under(shop.staging) == []
    assert files_under(shop.home / "safety") == []
