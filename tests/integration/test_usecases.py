"""The use cases called in-process, as the HTTP API and the scheduler will call them: each result
holds everything a front door shows, with no terminal and no second look at the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.jobs import ListJobs, current_status, list_jobs
from capsule.orchestrator.usecases.restore import IncludeNeedsFiles, Restore, restore_snapshot
from capsule.orchestrator.usecases.snapshots import ChooseSnapshots, list_snapshots
from tests.integration.helpers import Shop, sha256_file


def settings_of(shop: Shop) -> Settings:
    # nice=0: the backup would otherwise lower the priority of the test process itself.
    return Settings(database=shop.database, repository=shop.repository, home=shop.home, nice=0)


def test_backup_and_restore_results_hold_what_a_front_door_shows(shop: Shop, tmp_path: Path) -> None:
    settings = settings_of(shop)

    backed = back_up(settings, Backup(kind="database", actor="person:test"))

    assert [s.manifest.kind for s in backed.snapshots] == ["database"]
    snapshot = backed.snapshots[0]
    entry = snapshot.manifest.entries[0]
    assert snapshot.manifest.source == str(shop.database.resolve())
    assert snapshot.manifest.totals.bytes == shop.database.stat().st_size

    request = Restore("latest-database", to=tmp_path / "out", actor="person:test")
    restored = restore_snapshot(settings, request)

    assert (restored.snapshot_id, restored.in_place) == (snapshot.snapshot_id, False)
    assert [(f.size, f.sha256) for f in restored.restored] == [(entry.size, entry.sha256)]
    assert sha256_file(Path(restored.restored[0].path)) == entry.sha256
    listing = list_snapshots(settings, ChooseSnapshots())
    assert [sid for sid, _ in listing.snapshots] == [snapshot.snapshot_id]
    assert not listing.filtered and listing.damaged == []
    jobs = list_jobs(settings, ListJobs()).rows
    assert [(r["job_id"], r["status"]) for r in jobs] == [
        (restored.job_id, "completed"),
        (backed.job_id, "completed"),
    ]
    assert (current_status(settings).last_snapshot or {})["snapshot_id"] == snapshot.snapshot_id


def test_include_on_a_database_snapshot_is_refused_before_any_job_is_recorded(
    shop: Shop, tmp_path: Path
) -> None:
    settings = settings_of(shop)
    back_up(settings, Backup(actor="person:test"))

    with pytest.raises(IncludeNeedsFiles, match="holds a database"):
        restore_snapshot(settings, Restore("latest-database", to=tmp_path / "out", include=("*.db",)))

    assert [r["job_type"] for r in list_jobs(settings, ListJobs()).rows] == ["backup"]
    assert not (tmp_path / "out").exists()
