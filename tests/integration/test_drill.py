"""Restore drills run in-process on real files: what they prove, what they refuse to call proven,
where their copies go, and that the live database is never touched.

Damage is made as tests/e2e/test_damaged_snapshots.py makes it: bytes flipped in the repository.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from capsule.adapters.drill import SCRATCH, DrillFoundDamage, check_database_copy
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.rebuild import read_pack_header
from capsule.domain.errors import Category
from capsule.orchestrator import projections
from capsule.orchestrator.drillsteps import at_low_priority
from capsule.orchestrator.jobrunner import JobFailed
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.drill import Drill, run_drill
from capsule.orchestrator.usecases.jobs import Cancel, cancel_job, current_status, replay_log
from capsule.orchestrator.usecases.repository import open_repository
from tests.integration.helpers import Shop, flip_byte, in_process_settings, sha256_file
from tests.integration.uploads import make_uploads

IMAGES = 6  # the files make_uploads writes, the empty one included


def settings_of(shop: Shop, **changes: object) -> Settings:
    return in_process_settings(shop, **{"uploads": shop.root / "uploads", **changes})


@pytest.fixture
def both(shop: Shop) -> Settings:
    """A shop with a database snapshot and an images snapshot."""
    settings = settings_of(shop)
    make_uploads(settings.uploads)
    back_up(settings, Backup(kind="all", actor="person:test"))
    return settings


def scratch(settings: Settings) -> list[str]:
    root = settings.home / SCRATCH
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_drill_proves_the_newest_snapshots_and_leaves_nothing_behind(both: Settings) -> None:
    live = (sha256_file(both.database), both.database.stat().st_mtime_ns)
    newest = back_up(both, Backup(kind="database", actor="person:test")).snapshots[0].snapshot_id

    drilled = run_drill(both, Drill(actor="person:test"))

    assert drilled.database_snapshot_id == newest
    assert (drilled.integrity_check, drilled.foreign_key_check) == ("ok", "ok")
    assert (drilled.images_total, drilled.images_sampled, drilled.images_checked) == (IMAGES, IMAGES, IMAGES)
    assert drilled.bytes > both.database.stat().st_size
    assert scratch(both) == [] and oct((both.home / SCRATCH).stat().st_mode & 0o777) == "0o700"
    assert (sha256_file(both.database), both.database.stat().st_mtime_ns) == live
    status = current_status(both)
    assert {k: (r or {}).get("snapshot_id") for k, r in status.proven.items()} == {
        "database": newest,
        "files": drilled.files_snapshot_id,
    }
    assert status.last_drill is not None
    assert (status.last_drill["job_id"], status.last_drill["status"]) == (drilled.job_id, "completed")
    assert status.proven["database"]["job_id"] == drilled.job_id  # type: ignore[index]


def test_the_proofs_are_kept_in_either_event_store(shop: Shop, event_store_url: str) -> None:
    settings = settings_of(shop, event_store_url=event_store_url)
    make_uploads(settings.uploads)
    backed = back_up(settings, Backup(kind="all", actor="person:test"))

    drilled = run_drill(settings, Drill(actor="person:test"))

    proven = {k: (r or {}).get("snapshot_id") for k, r in current_status(settings).proven.items()}
    assert proven == {"database": backed.snapshots[0].snapshot_id, "files": backed.snapshots[1].snapshot_id}
    assert drilled.files_snapshot_id == backed.snapshots[1].snapshot_id


def test_the_proven_snapshots_come_back_the_same_from_a_replay(both: Settings) -> None:
    run_drill(both, Drill(actor="person:test"))
    last = run_drill(both, Drill(actor="person:test"))
    runtime = Runtime(both)
    try:
        before = projections.proven_snapshots(runtime.engine)
        drills = projections.list_jobs(runtime.engine, job_type="drill")
        assert {r["job_id"] for r in before.values()} == {last.job_id}

        # Folded apart, in parts that each hold some of the drills: the later proof still wins.
        projections.replay(runtime.engine, runtime.store, workers=3)
        assert projections.proven_snapshots(runtime.engine) == before
    finally:
        runtime.close()

    replay_log(both)

    runtime = Runtime(both)
    try:
        assert projections.proven_snapshots(runtime.engine) == before
        assert projections.list_jobs(runtime.engine, job_type="drill") == drills
    finally:
        runtime.close()


def test_a_sample_is_the_larger_of_a_count_and_a_share(shop: Shop) -> None:
    settings = settings_of(shop, drill_sample_files=2, drill_sample_percent=50.0)
    make_uploads(settings.uploads)
    back_up(settings, Backup(kind="all", actor="person:test"))

    drilled = run_drill(settings, Drill(actor="person:test"))

    assert (drilled.images_total, drilled.images_sampled, drilled.images_checked) == (IMAGES, 3, 3)


def test_a_drill_with_nothing_to_prove_fails_and_proves_nothing(shop: Shop) -> None:
    settings = settings_of(shop)

    with pytest.raises(JobFailed, match="nothing to prove; run `capsule backup` first") as failed:
        run_drill(settings, Drill(actor="person:test"))

    assert failed.value.category is Category.NOT_FOUND
    status = current_status(settings)
    assert status.proven == {"database": None, "files": None}
    assert status.last_drill is not None and status.last_drill["status"] == "failed"


def test_a_database_proven_before_the_images_were_missing_stays_proven(shop: Shop) -> None:
    settings = settings_of(shop)
    made = back_up(settings, Backup(kind="database", actor="person:test")).snapshots[0].snapshot_id

    with pytest.raises(JobFailed, match=r"no images snapshot of .* yet"):
        run_drill(settings, Drill(actor="person:test"))

    status = current_status(settings)
    assert (status.proven["database"] or {}).get("snapshot_id") == made
    assert status.proven["files"] is None
    assert status.last_drill is not None and status.last_drill["status"] == "failed"


def test_a_damaged_database_snapshot_fails_the_drill_naming_it(shop: Shop) -> None:
    settings = settings_of(shop)
    made = back_up(settings, Backup(kind="database", actor="person:test")).snapshots[0].snapshot_id
    for pack in shop.packs():
        flip_byte(pack)

    with pytest.raises(JobFailed, match=f"database snapshot {made[:12]} does not restore") as failed:
        run_drill(settings, Drill(actor="person:test"))

    assert failed.value.category is Category.DAMAGED
    assert scratch(settings) == []
    assert current_status(settings).proven["database"] is None


def test_a_damaged_image_fails_the_drill_naming_the_image(shop: Shop) -> None:
    settings = settings_of(shop, drill_sample_percent=100.0)
    back_up(settings, Backup(kind="database", actor="person:test"))
    before = set(shop.packs())
    make_uploads(settings.uploads)
    back_up(settings, Backup(kind="files", actor="person:test"))
    repo = open_repository(settings)
    for pack in set(shop.packs()) - before:
        if any(b.blob_type == BLOB_DATA for b in read_pack_header(repo, pack.name)):
            flip_byte(pack, 200)  # the first blob's sealed bytes: the images stored first

    with pytest.raises(JobFailed, match=r"image '[^']+' of images snapshot [0-9a-f]{12} does not restore"):
        run_drill(settings, Drill(actor="person:test"))

    status = current_status(settings)
    assert status.proven["database"] is not None and status.proven["files"] is None


def test_an_unreadable_snapshot_fails_the_drill_as_it_may_be_the_newest(both: Settings, shop: Shop) -> None:
    newest = back_up(both, Backup(kind="database", actor="person:test")).snapshots[0].snapshot_id
    flip_byte(shop.snapshot_file(newest))

    with pytest.raises(JobFailed, match=f"snapshot {newest[:12]} cannot be read: .* nothing is proven"):
        run_drill(both, Drill(actor="person:test"))


def test_sqlite_damage_in_a_copy_fails_and_broken_foreign_keys_are_reported(tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    conn = sqlite3.connect(copy)
    conn.executescript(
        """
        CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE sales (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id));
        CREATE INDEX products_name ON products(name);
        INSERT INTO products VALUES (1, 'tea'), (2, 'coffee');
        INSERT INTO sales VALUES (1, 1), (2, 7);
        """
    )
    conn.commit()
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'products_name'").fetchone()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()

    checked = check_database_copy("ab" * 32, copy)
    assert (checked.integrity_check, checked.foreign_key_check) == ("ok", "1 row(s) break a foreign key")
    assert checked.foreign_key_rows == ["sales row 2 -> products"]

    data = bytearray(copy.read_bytes())
    page = data[(root - 1) * page_size : root * page_size]
    at = (root - 1) * page_size + page.index(b"coffee")
    data[at : at + 6] = b"cocoa!"  # the index now names a value its table does not hold
    copy.write_bytes(bytes(data))
    with pytest.raises(DrillFoundDamage, match="integrity_check finds the copy damaged"):
        check_database_copy("ab" * 32, copy)


def test_the_drill_runs_at_low_priority_on_a_thread_of_its_own() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("a thread has a nice value of its own on Linux only")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen = at_low_priority(mine + 5, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    assert seen == mine + 5
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    with pytest.raises(ZeroDivisionError):
        at_low_priority(mine + 5, lambda: 1 // 0)


def test_leftovers_of_a_killed_drill_go_and_those_of_a_live_one_stay(both: Settings) -> None:
    root = both.home / SCRATCH
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name, pid in (("dead", int(gone.stdout)), ("live", alive.pid)):
            (root / f"20261206031200-{name}-{pid}-a1b2c3" / "images").mkdir(parents=True)
            (root / f"20261206031200-{name}-{pid}-a1b2c3" / "drill-copy.db").write_bytes(b"x" * 100)

        run_drill(both, Drill(actor="person:test"))

        assert scratch(both) == [f"20261206031200-live-{alive.pid}-a1b2c3"]
    finally:
        alive.kill()
        alive.wait()


def test_a_drill_that_has_not_started_can_be_cancelled(both: Settings) -> None:
    runtime = Runtime(both)
    try:
        job_id = runtime.request_drill(database_source="/db", files_source="/images", actor="person:test")
    finally:
        runtime.close()

    cancelled = cancel_job(both, Cancel(job_id, actor="person:test"))

    assert (cancelled.job_type, cancelled.was) == ("drill", "pending")
    assert current_status(both).last_drill["status"] == "cancelled"  # type: ignore[index]
