"""`capsule jobs`, `status` and `audit`: who did what and when, as a person reads it or as JSON."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.helpers import FAST_STEPS, Shop, one_line_error


def test_status_jobs_and_audit_describe_a_backup_and_a_failed_one(shop: Shop) -> None:
    shop.run("backup", expect=0)
    missing = shop.run("backup", env={"CAPSULE_DATABASE": str(shop.root / "gone.db")}, expect=1)
    assert "CAPSULE_DATABASE" in one_line_error(missing)

    status = json.loads(shop.run("status", "--json", expect=0).stdout)
    assert status["last_snapshot"]["snapshot_id"] == shop.snapshots()[0]["snapshot_id"]
    assert status["active_jobs"] == []
    assert len(status["recent_failures"]) == 1
    text = shop.run("status", expect=0).stdout
    assert "Last database snapshot: " + shop.snapshots()[0]["snapshot_id"][:12] in text
    assert "Last files snapshot: none yet" in text

    jobs = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    assert [j["status"] for j in jobs] == ["failed", "completed"]
    assert "gone.db" in jobs[0]["error"]
    assert json.loads(shop.run("jobs", "--status", "failed", "--json", expect=0).stdout) == jobs[:1]

    failed = jobs[0]["job_id"]
    events = json.loads(shop.run("audit", "--job", failed, "--json", expect=0).stdout)
    assert [e["type"] for e in events] == ["BackupRequested", "StepStarted", "StepFailed", "BackupFailed"]
    assert events[2]["data"]["category"] == "unavailable"  # the database could not be read
    assert events[0]["actor"].startswith("person:")
    assert all(e["actor"].startswith("system:worker:") for e in events[1:])
    table = shop.run("audit", "--job", failed, expect=0).stdout.splitlines()
    assert len(table) == 4 and "BackupFailed" in table[-1]

    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert json.loads(shop.run("audit", "--since", future, "--json", expect=0).stdout) == []
    everything = json.loads(shop.run("audit", "--since", "2000-01-01", "--json", expect=0).stdout)
    assert len(everything) == len(json.loads(shop.run("audit", "--json", expect=0).stdout)) >= 9
    bad = shop.run("audit", "--since", "yesterday", expect=1)
    assert "--since" in one_line_error(bad)


def test_replay_rebuilds_the_same_jobs(shop: Shop) -> None:
    shop.run("backup", expect=0)
    before = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    out = shop.run("replay", expect=0).stdout
    assert out.startswith("Replayed ")
    assert json.loads(shop.run("jobs", "--json", expect=0).stdout) == before


@pytest.mark.slow
def test_worker_until_idle_says_what_it_finished(shop: Shop) -> None:
    def killed_backup() -> None:
        proc = shop.run("backup", env={**FAST_STEPS, "CAPSULE_FAULTS": "store:halfway"})
        assert proc.returncode == -signal.SIGKILL, proc.stderr

    killed_backup()
    finished = shop.run("worker", "--until-idle", env=FAST_STEPS, expect=0).stdout.strip().splitlines()[-1]
    assert finished.startswith("Worker ") and "stopped: 1 job completed, 0 failed;" in finished
    assert " steps done, 0 failed attempts." in finished

    killed_backup()
    shop.database.rename(shop.root / "away.db")  # the job's source is gone: it fails
    failed = shop.run("worker", "--until-idle", env=FAST_STEPS, expect=0).stdout.strip().splitlines()[-1]
    assert "stopped: 0 jobs completed, 1 failed; 0 steps done, 1 failed attempt." in failed
    assert "`capsule jobs --status failed` says why" in failed

    idle = shop.run("worker", "--until-idle", env=FAST_STEPS, expect=0)
    assert "it found nothing to do" in idle.stdout
