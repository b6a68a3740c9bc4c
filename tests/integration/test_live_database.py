"""Backups of a database the shop keeps writing to: every snapshot restores to a consistent state.

A writer process commits one sale and its items per transaction while `capsule backup` runs several
times. Each restored database must pass SQLite's integrity check, have every sale total equal to the
sum of its items, hold at least every sale committed before its backup started and none committed
after it finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import posdb
from tests.integration.helpers import DatabaseTemplates, Shop, sales_count, side_files

pytestmark = pytest.mark.slow

BACKUPS = 3


def _backups_under_load(shop: Shop, tmp_path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run BACKUPS backups while the writer commits; return per-backup facts and the writer's report."""
    writer = posdb.start_writer(shop.database, tmp_path / "writer.json", interval_ms=1.0)
    taken: list[dict[str, Any]] = []
    try:
        for _ in range(BACKUPS):
            time.sleep(0.4)
            before = sales_count(shop.database)
            result = shop.backup()
            after = sales_count(shop.database)
            taken.append({"id": result["snapshot_id"], "before": before, "after": after})
    finally:
        stats = posdb.stop_writer(writer)
    return taken, stats


def _check_restores(shop: Shop, tmp_path: Path, taken: list[dict[str, Any]]) -> list[int]:
    counts = []
    for n, snap in enumerate(taken):
        target = tmp_path / f"restored-{n}"
        shop.restore(snap["id"], target)
        restored = target / shop.db_name
        assert sorted(p.name for p in target.iterdir()) == [shop.db_name]
        assert side_files(restored) == []
        report = posdb.check_consistency(restored)
        assert report["integrity"] == "ok", report
        assert report["bad_sales"] == [], f"sales whose total differs from their items: {report}"
        assert snap["before"] <= report["sales"] <= snap["after"], (snap, report["sales"])
        counts.append(report["sales"])
    return counts


def test_wal_database_backed_up_while_writer_commits_restores_consistent_snapshots(
    shop: Shop, tmp_path: Path, templates: DatabaseTemplates
) -> None:
    templates.copy(shop.database, size_mib=12, journal_mode="wal")
    initial = sales_count(shop.database)

    taken, stats = _backups_under_load(shop, tmp_path)

    assert stats["errors"] == 0, stats
    assert stats["commits"] > 0
    assert taken[0]["before"] > initial, "the writer was not committing while the backups ran"
    counts = _check_restores(shop, tmp_path, taken)
    assert counts == sorted(counts) and counts[0] < counts[-1], counts
    assert posdb.check_consistency(shop.database)["consistent"]


def test_rollback_journal_database_backed_up_while_writer_commits_restores_consistent_snapshots(
    shop: Shop, tmp_path: Path, templates: DatabaseTemplates, record_property: Any
) -> None:
    templates.copy(shop.database, size_mib=12, journal_mode="delete")
    initial = sales_count(shop.database)

    taken, stats = _backups_under_load(shop, tmp_path)
    record_property("writer_max_latency_ms", stats["max_ms"])
    record_property("writer_commits", stats["commits"])

    assert stats["errors"] == 0, stats
    assert taken[0]["before"] > initial, "the writer was not committing before the first backup"
    assert taken[-1]["after"] > taken[0]["before"], "the writer stopped committing during the backups"
    assert all(shop.journal_mode_of(snap["id"]) == "delete" for snap in taken)
    counts = _check_restores(shop, tmp_path, taken)
    assert counts == sorted(counts) and counts[0] < counts[-1], counts
    assert posdb.check_consistency(shop.database)["consistent"]
