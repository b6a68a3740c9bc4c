"""At most one backup of a database at a time, and never a backup during a restore of it.

A fault point armed with a pause holds the first job inside its step while the second is asked for.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from tests.integration.helpers import Shop, file_content_digest, running
from tests.integration.uploads import make_uploads


def _jobs(shop: Shop) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    return rows


def _wait_running(shop: Shop, proc: subprocess.Popen[str], step: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        running = [j for j in shop.jobs_seen() if j["status"] == "running" and j["current_step"] == step]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no job reached {step}")


def _positions(shop: Shop, job_id: str, kind: str) -> list[int]:
    events = json.loads(shop.run("audit", "--job", job_id, "--json", expect=0).stdout)
    return [e["position"] for e in events if e["type"] == kind]


def _second_backup_once_it_waits(shop: Shop, words: str, release: Path) -> tuple[str, str]:
    """Run a second `capsule backup --json`; once its stderr says `words` (it waits for the job
    held in place), let that job go with `release`. Return (what it said by then, its stdout)."""
    second = shop.popen("backup", "--json")
    with running(second):
        assert second.stderr is not None
        said = ""
        try:
            while line := second.stderr.readline():
                said += line
                if words in line:
                    break
        finally:
            release.touch()
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, said + err
    return said + err, out


def test_a_second_backup_of_the_same_database_waits_for_the_first(shop: Shop) -> None:
    # Held until the second backup says it waits for it, however busy the machine.
    release = shop.root / "release-the-first"
    first = shop.popen("backup", "--json", env={"CAPSULE_FAULTS": f"store:locked@until={release}"})
    with running(first):
        held = _wait_running(shop, first, "store")
        said, second_out = _second_backup_once_it_waits(shop, "waiting up to", release)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err

    assert f"running (job {held['job_id']})" in said
    later = json.loads(second_out)["job_id"]
    assert json.loads(out)["job_id"] == held["job_id"]
    # The second job's steps started only after the first job had completed.
    assert min(_positions(shop, later, "StepStarted")) > max(
        _positions(shop, held["job_id"], "BackupCompleted")
    )
    queued = json.loads(shop.run("audit", "--job", later, "--json", expect=0).stdout)
    assert [e["type"] for e in queued][:3] == ["BackupRequested", "BackupQueued", "BackupReleased"]
    assert len(shop.snapshots()) == 2


def test_a_backup_asked_for_during_an_in_place_restore_runs_after_it(shop: Shop, tmp_path: Path) -> None:
    shop.run("backup", expect=0)
    snapshot_content = file_content_digest(shop.database)
    with __import__("sqlite3").connect(shop.database) as conn:
        conn.execute("DELETE FROM sale_items WHERE id % 5 = 0")
    # Held until the backup says it waits for the restore, however busy the machine (a fixed pause
    # let a backup slower to start than the pause find nothing to wait for).
    release = shop.root / "release-the-restore"
    restore = shop.popen(
        "restore", "latest", "--in-place", env={"CAPSULE_FAULTS": f"apply:checked@until={release}"}
    )
    with running(restore):
        restoring = _wait_running(shop, restore, "apply")
        said, backup_out = _second_backup_once_it_waits(shop, "waiting for the database", release)
        _, err = restore.communicate(timeout=120)
    assert restore.returncode == 0, err
    assert "waiting for the database" in said and f"restore job {restoring['job_id']}" in said, said
    backup = json.loads(backup_out)

    # The backup read the database only once the restore had put the snapshot back.
    shop.restore(backup["snapshot_id"], tmp_path / "out")
    assert file_content_digest(tmp_path / "out" / shop.db_name, immutable=True) == snapshot_content
    assert [j["status"] for j in _jobs(shop) if j["job_id"] == restoring["job_id"]] == ["completed"]


def _streams(shop: Shop) -> dict[str, list[tuple[int, str, dict[str, Any]]]]:
    """(position, type, data) of every event of every stream, read in this process."""
    runtime = Runtime(Settings(database=shop.database, repository=shop.repository, home=shop.home))
    try:
        out: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        for e in runtime.store.read_all(0, limit=100_000):
            out.setdefault(e.stream_id, []).append((e.position, e.type, e.data))
        return out
    finally:
        runtime.close()


@pytest.mark.slow
def test_a_backup_of_all_waits_for_a_database_backup_but_a_files_backup_does_not(shop: Shop) -> None:
    uploads = shop.root / "uploads"
    make_uploads(uploads)
    images = {"CAPSULE_UPLOADS": str(uploads)}
    # Held until the files backup has ended, however busy the machine.
    release = shop.root / "release-the-first"
    first = shop.popen("backup", "--json", env={**images, "CAPSULE_FAULTS": f"store:locked@until={release}"})
    with running(first):
        database = _wait_running(shop, first, "store")["job_id"]
        both = shop.popen("backup", "--kind", "all", "--json", env=images)
        with running(both):
            assert both.stderr is not None
            # The command says so once the job is queued: wait for that line, or for the end.
            said = ""
            while line := both.stderr.readline():
                if "waiting up to" in line:
                    said = line
                    break
            assert f"running (job {database})" in said, said

            # The images are not the database: this backup runs at once and ends before the first.
            files = json.loads(shop.run("backup", "--kind", "files", "--json", env=images, expect=0).stdout)
            release.touch()

            out, err = both.communicate(timeout=120)
            assert both.returncode == 0, err
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err

    streams = _streams(shop)
    of_all = streams[f"backup-{json.loads(out)['job_id']}"]
    assert [t for _, t, _ in of_all][:3] == ["BackupRequested", "BackupQueued", "BackupReleased"]
    assert of_all[1][2]["behind_job_id"] == database
    [done] = [p for p, t, _ in streams[f"backup-{database}"] if t == "BackupCompleted"]
    assert min(p for p, t, _ in of_all if t == "StepStarted") > done
    of_files = streams[f"backup-{files['job_id']}"]
    assert "BackupQueued" not in [t for _, t, _ in of_files]
    assert max(p for p, _, _ in of_files) < done
    assert sorted(s["kind"] for s in shop.snapshots()) == ["database", "database", "files", "files"]
