"""Incremental backups follow SQLite pages: a few changed rows cost about the pages they touched."""

from __future__ import annotations

from pathlib import Path

from benchmarks import posdb
from tests.integration.helpers import (
    DatabaseTemplates,
    Shop,
    file_content_digest,
    sha256_file,
    side_files,
)


def test_second_backup_stores_about_the_changed_pages_and_both_snapshots_restore_exactly(
    shop: Shop, tmp_path: Path, templates: DatabaseTemplates
) -> None:
    templates.copy(shop.database, size_mib=12)
    original_content = file_content_digest(shop.database)
    first = shop.backup()
    total_pages = first["totals"]["blobs"]
    assert first["totals"]["new_blobs"] == total_pages > 2000

    changed = posdb.mutate_pages(shop.database, fraction=0.005, seed=3)
    assert 0 < changed < total_pages // 50
    changed_content = file_content_digest(shop.database)
    assert changed_content != original_content
    second = shop.backup()

    new_blobs = second["totals"]["new_blobs"]
    assert second["parent"] == first["snapshot_id"]
    assert 1 <= new_blobs <= 2 * changed + 4, (new_blobs, changed)
    assert new_blobs < total_pages // 20
    assert second["totals"]["stored_bytes"] < first["totals"]["stored_bytes"] // 10

    for snap, expected_content in ((first, original_content), (second, changed_content)):
        sid = snap["snapshot_id"]
        target = tmp_path / sid[:12]
        proc = shop.restore(sid[:8], target)
        restored = target / shop.db_name
        digest = sha256_file(restored)
        assert digest == shop.manifest_sha256(sid)
        assert f"SHA-256 {digest[:16]}" in proc.stdout
        assert side_files(restored) == []
        assert file_content_digest(restored, immutable=True) == expected_content
    assert sha256_file(tmp_path / first["snapshot_id"][:12] / shop.db_name) != sha256_file(
        tmp_path / second["snapshot_id"][:12] / shop.db_name
    )
