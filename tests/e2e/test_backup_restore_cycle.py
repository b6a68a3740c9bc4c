"""A shop owner's everyday cycle: init, back up, list, restore, and the safeguards around restore."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from tests.integration.helpers import (
    Shop,
    file_content_digest,
    files_under,
    one_line_error,
    sha256_file,
)


def test_init_backup_list_and_restore_latest_gives_back_the_database(bare_shop: Shop, tmp_path: Path) -> None:
    shop = bare_shop
    init = shop.run("init", expect=0)
    assert str(shop.key_file) in init.stdout
    assert "capsule key export --paper" in init.stdout, "init must say how to keep the key off this machine"
    assert shop.key_file.is_file()
    assert shop.run("snapshots", expect=0).stdout.startswith("No snapshots yet")

    backed_up = shop.run("backup", "--kind", "database", expect=0)
    assert "Snapshot " in backed_up.stdout

    rows = shop.snapshots()
    assert len(rows) == 1
    sid = rows[0]["snapshot_id"]
    assert len(sid) == 64 and int(sid, 16) >= 0
    assert sid[:12] in shop.run("snapshots", expect=0).stdout

    target = tmp_path / "restored"
    proc = shop.restore("latest", target)
    restored = target / "pos.db"
    digest = sha256_file(restored)
    assert digest == shop.manifest_sha256(sid)
    assert f"SHA-256 {digest[:16]}" in proc.stdout
    assert sid[:12] in proc.stdout
    assert files_under(target) == ["pos.db"]
    assert file_content_digest(restored, immutable=True) == file_content_digest(shop.database)


def test_restore_refuses_to_overwrite_without_force_and_replaces_with_force(
    shop: Shop, tmp_path: Path
) -> None:
    sid = shop.backup()["snapshot_id"]
    target = tmp_path / "restored"
    shop.restore("latest", target)
    restored = target / "pos.db"
    restored.write_bytes(b"edited by hand")
    stat_before = restored.stat()

    refused = shop.restore("latest", target, expect=1)

    message = one_line_error(refused)
    assert "--force" in message and str(restored.resolve()) in message
    assert restored.read_bytes() == b"edited by hand"
    assert restored.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert files_under(target) == ["pos.db"]

    shop.restore("latest", target, "--force")
    assert sha256_file(restored) == shop.manifest_sha256(sid)
    assert files_under(target) == ["pos.db"]


def test_restore_refuses_when_a_stale_wal_file_sits_at_the_target(shop: Shop, tmp_path: Path) -> None:
    shop.backup()
    target = tmp_path / "restored"
    target.mkdir()
    (target / "pos.db-wal").write_bytes(b"left over")

    refused = shop.restore("latest", target, expect=1)
    assert "--force" in one_line_error(refused)
    assert files_under(target) == ["pos.db-wal"]

    # With --force the stale WAL goes: it would otherwise be replayed into the restored database.
    shop.restore("latest", target, "--force")
    assert files_under(target) == ["pos.db"]


def test_restore_by_unique_prefix_picks_that_snapshot(shop: Shop, tmp_path: Path) -> None:
    first = shop.backup()["snapshot_id"]
    conn = sqlite3.connect(shop.database)
    conn.execute("DELETE FROM sale_items WHERE sale_id IN (SELECT id FROM sales ORDER BY id DESC LIMIT 5)")
    conn.execute("DELETE FROM sales WHERE id IN (SELECT id FROM sales ORDER BY id DESC LIMIT 5)")
    conn.commit()
    conn.close()
    second = shop.backup()["snapshot_id"]
    assert first != second

    for sid in (first, second):
        target = tmp_path / sid[:6]
        proc = shop.restore(sid[:6], target)
        assert f"Snapshot {sid[:12]} restored" in proc.stdout
        assert sha256_file(target / "pos.db") == shop.manifest_sha256(sid)
    assert sha256_file(tmp_path / first[:6] / "pos.db") != sha256_file(tmp_path / second[:6] / "pos.db")


def test_unknown_or_too_short_snapshot_reference_gives_a_one_line_error(shop: Shop, tmp_path: Path) -> None:
    empty_latest = shop.restore("latest", tmp_path / "none", expect=1)
    assert "no snapshots" in one_line_error(empty_latest)

    sid = shop.backup()["snapshot_id"]
    unknown = "0000" if not sid.startswith("0000") else "ffff"
    for ref in (unknown, sid[:3]):
        proc = shop.restore(ref, tmp_path / "x", expect=1)
        message = one_line_error(proc)
        assert repr(ref) in message and "capsule snapshots" in message
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "none").exists()


def test_ambiguous_snapshot_prefix_gives_a_one_line_error(shop: Shop, tmp_path: Path) -> None:
    sid = shop.backup()["snapshot_id"]
    # A second snapshot file whose name shares the first 10 characters with the real one.
    twin = sid[:10] + ("0" if sid[10] != "0" else "1") + sid[11:]
    shutil.copyfile(shop.snapshot_file(sid), shop.snapshot_file(twin))

    proc = shop.restore(sid[:8], tmp_path / "x", expect=1)

    message = one_line_error(proc)
    assert repr(sid[:8]) in message and "2 snapshots" in message
    assert not (tmp_path / "x").exists()
    shop.restore(sid, tmp_path / "full-id")
    assert sha256_file(tmp_path / "full-id" / "pos.db") == shop.manifest_sha256(sid)


def test_restore_needs_exactly_one_of_to_or_in_place(shop: Shop, tmp_path: Path) -> None:
    shop.backup()
    neither = shop.run("restore", "latest", expect=2)
    both = shop.run("restore", "latest", "--to", str(tmp_path / "x"), "--in-place", expect=2)
    for proc in (neither, both):
        assert "--to" in proc.stderr and "--in-place" in proc.stderr
    assert not (tmp_path / "x").exists()
