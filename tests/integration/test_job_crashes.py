"""A worker killed with SIGKILL at any step boundary or in the middle of a step loses nothing.

Each case runs `capsule backup` (or a restore) with a fault point armed: the process kills itself
there, as a power cut would. `capsule worker --until-idle` then finishes every unfinished job from
the log alone. Afterwards the job has completed, exactly one snapshot exists, no blob is stored in
two packs, every step completed exactly once, and the restored database equals the source.
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.files.restore import restore_files
from capsule.adapters.repository.rebuild import read_pack_header
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.repository.verify import verify
from capsule.orchestrator import projections
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository
from capsule.orchestrator.usecases.snapshots import resolve_snapshot
from tests.integration.helpers import FAST_STEPS, Shop, file_content_digest
from tests.integration.uploads import describe_tree, make_uploads

FAST = {
    **FAST_STEPS,
    "CAPSULE_PACK_SIZE": str(1024 * 1024),
}

BACKUP_POINTS = [
    "store:started",
    "store:locked",
    "store:halfway",
    "store:stored",
    "store:done",
    "store:completed",
    "commit:started",
    "commit:written",
    "commit:done",
    "commit:completed",
]

RESTORE_POINTS = ["restore:started", "restore:written", "restore:done", "restore:completed"]
IN_PLACE_POINTS = [
    "stage:started",
    "stage:staged",
    "stage:done",
    "apply:checked",
    "apply:copied",
    "apply:done",
]


def _settings(shop: Shop) -> Settings:
    return Settings(database=shop.database, repository=shop.repository, home=shop.home)


def _events(shop: Shop) -> list[dict[str, Any]]:
    """The whole log, read in this process (a `capsule audit` per case would cost a start-up)."""
    runtime = Runtime(_settings(shop))
    try:
        return [
            {"position": e.position, "stream": e.stream_id, "type": e.type, "data": e.data}
            for e in runtime.store.read_all(0, limit=100_000)
        ]
    finally:
        runtime.close()


def _jobs(shop: Shop) -> list[dict[str, Any]]:
    runtime = Runtime(_settings(shop))
    try:
        return projections.list_jobs(runtime.engine, limit=100)
    finally:
        runtime.close()


def _restored_equals_source(shop: Shop, out: Path, ref: str = "latest") -> None:
    settings = _settings(shop)
    repo = open_repository(settings)
    _, manifest = resolve_snapshot(repo, ref)
    restore_snapshot(repo, manifest, out)
    restored = out / shop.db_name
    assert file_content_digest(restored, immutable=True) == file_content_digest(shop.database, immutable=True)


def _assert_no_blob_stored_twice(shop: Shop) -> None:
    repo = open_repository(_settings(shop))
    seen: collections.Counter[bytes] = collections.Counter()
    for name in repo.backend.list("data"):
        for blob in read_pack_header(repo, name):
            seen[blob.blob_id] += 1
    twice = [b.hex()[:12] for b, n in seen.items() if n > 1]
    assert twice == [], f"{len(twice)} blobs are stored in more than one pack"


def _assert_each_step_completed_once(events: list[dict[str, Any]]) -> None:
    completed = collections.Counter(
        (e["stream"], e["data"]["step"]) for e in events if e["type"] == "StepCompleted"
    )
    assert completed and max(completed.values()) == 1, completed
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions))


def _killed(shop: Shop, *args: str, point: str, env: dict[str, str] | None = None) -> None:
    proc = shop.run(*args, env={**FAST, **(env or {}), "CAPSULE_FAULTS": point}, expect=None, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{point} was not reached: {proc.returncode} {proc.stderr}"


@pytest.mark.parametrize("point", BACKUP_POINTS)
def test_backup_killed_at_any_point_completes_once_and_restores(
    shop: Shop, point: str, tmp_path: Path
) -> None:
    _killed(shop, "backup", point=point)

    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=120)

    jobs = _jobs(shop)
    assert [j["status"] for j in jobs] == ["completed"], jobs
    snapshots = list(open_repository(_settings(shop)).backend.list("snapshots"))
    assert snapshots == [jobs[0]["snapshot_id"]]
    _assert_no_blob_stored_twice(shop)
    _assert_each_step_completed_once(_events(shop))
    _restored_equals_source(shop, tmp_path / "out")
    report = verify(open_repository(_settings(shop)), read_data=True)
    assert report.ok, report.problems


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_restore_killed_at_any_point_completes(shop: Shop, point: str, tmp_path: Path) -> None:
    shop.run("backup", env=FAST, expect=0)
    out = tmp_path / "out"

    _killed(shop, "restore", "latest", "--to", str(out), point=point)
    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=120)

    jobs = _jobs(shop)
    assert sorted(j["status"] for j in jobs) == ["completed", "completed"], jobs
    restored = out / shop.db_name
    assert file_content_digest(restored, immutable=True) == file_content_digest(shop.database, immutable=True)
    assert sorted(p.name for p in out.iterdir()) == [shop.db_name]
    _assert_each_step_completed_once(_events(shop))


@pytest.mark.parametrize("point", IN_PLACE_POINTS)
def test_in_place_restore_killed_at_any_point_completes_with_one_safety_copy(shop: Shop, point: str) -> None:
    shop.run("backup", env=FAST, expect=0)
    expected = file_content_digest(shop.database, immutable=True)
    with __import__("sqlite3").connect(shop.database) as conn:
        conn.execute("DELETE FROM sale_items WHERE id % 7 = 0")
    before = file_content_digest(shop.database)

    _killed(shop, "restore", "latest", "--in-place", point=point)
    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=120)

    jobs = _jobs(shop)
    assert sorted(j["status"] for j in jobs) == ["completed", "completed"], jobs
    assert file_content_digest(shop.database) == expected
    # One copy for the job, whatever its attempts: the database as it was before the restore.
    [safety] = (shop.home / "safety").iterdir()
    assert file_content_digest(safety, immutable=True) == before
    assert list(shop.staging.glob("restore-*")) == []
    _assert_each_step_completed_once(_events(shop))


# ---- product images ---------------------------------------------------------------------------

# A kill at store:halfway comes once the first item is recorded: a file too large to be read whole,
# first in walk order, means packs of it are already written, and not yet indexed, when it dies.
FILES_BACKUP_CASES = [
    ("files", "store:halfway"),
    ("files", "commit:written"),
    ("all", "store:files:done"),
]


@pytest.fixture
def images_shop(bare_shop: Shop) -> Shop:
    """A shop with product images and a repository of small packs (its pack size is set at init)."""
    bare_shop.init(env=FAST)
    make_uploads(bare_shop.root / "uploads", big=9 * 1024 * 1024)
    return bare_shop


def _images(shop: Shop) -> dict[str, str]:
    return {"CAPSULE_UPLOADS": str(shop.root / "uploads")}


def _snapshots_by_kind(shop: Shop, job_id: str) -> dict[str, list[str]]:
    repo = open_repository(_settings(shop))
    found: dict[str, list[str]] = {}
    for sid, manifest in repo.snapshots():
        assert manifest.job_id == job_id
        found.setdefault(manifest.kind, []).append(sid)
    return found


def _restored_tree(shop: Shop, snapshot_id: str, out: Path) -> dict[str, Any]:
    repo = open_repository(_settings(shop))
    restore_files(repo, repo.load_snapshot(snapshot_id), out)
    return describe_tree(out)


@pytest.mark.parametrize(("kind", "point"), FILES_BACKUP_CASES)
def test_images_backup_killed_completes_with_one_snapshot_per_kind(
    images_shop: Shop, kind: str, point: str, tmp_path: Path
) -> None:
    shop = images_shop
    images = _images(shop)
    _killed(shop, "backup", "--kind", kind, point=point, env=images)
    if point == "store:halfway":
        assert shop.packs() and shop.index_files() == []

    shop.run("worker", "--until-idle", env={**FAST, **images}, expect=0, timeout=120)

    [job] = _jobs(shop)
    assert (job["status"], job["kind"]) == ("completed", kind)
    by_kind = _snapshots_by_kind(shop, job["job_id"])
    expected_kinds = ["database", "files"] if kind == "all" else ["files"]
    assert sorted(by_kind) == expected_kinds
    assert all(len(ids) == 1 for ids in by_kind.values()), by_kind
    assert job["snapshot_id"] == by_kind[expected_kinds[0]][0]
    _assert_no_blob_stored_twice(shop)
    _assert_each_step_completed_once(_events(shop))
    [files_snapshot] = by_kind["files"]
    assert _restored_tree(shop, files_snapshot, tmp_path / "out") == describe_tree(shop.root / "uploads")
    if kind == "all":
        _restored_equals_source(shop, tmp_path / "db", "latest-database")
    report = verify(open_repository(_settings(shop)), read_data=True)
    assert report.ok, report.problems


def test_images_restore_killed_after_writing_completes(images_shop: Shop, tmp_path: Path) -> None:
    shop = images_shop
    images = _images(shop)
    shop.run("backup", "--kind", "files", env={**FAST, **images}, expect=0)
    out = tmp_path / "out"

    _killed(shop, "restore", "latest-files", "--to", str(out), point="restore:written", env=images)
    shop.run("worker", "--until-idle", env={**FAST, **images}, expect=0, timeout=120)

    assert sorted(j["status"] for j in _jobs(shop)) == ["completed", "completed"]
    assert describe_tree(out) == describe_tree(shop.root / "uploads")
    _assert_each_step_completed_once(_events(shop))
