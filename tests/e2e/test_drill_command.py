"""`capsule drill` as a shop owner runs it: what it prints, how it ends, and that a drill is a job
like the others: listed, audited, cancelled by Ctrl-C, and finished after a kill -9."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_json_vocabulary import check_vocabulary
from tests.integration.helpers import CAPSULE, FAST_STEPS, Shop, flip_byte, one_line_error
from tests.integration.uploads import make_uploads

DRILLED = {
    "job_id",
    "database_snapshot_id",
    "files_snapshot_id",
    "database_taken_at",
    "files_taken_at",
    "integrity_check",
    "foreign_key_check",
    "foreign_key_rows",
    "images_total",
    "images_sampled",
    "images_checked",
    "bytes",
    "seconds",
}
PROOF = {"snapshot_id", "taken_at", "job_id", "proven_at"}


def json_of(shop: Shop, *args: str, expect: int = 0) -> Any:
    doc = json.loads(shop.run(*args, "--json", expect=expect).stdout)
    check_vocabulary(" ".join(args), doc)
    return doc


def scratch(shop: Shop) -> list[Path]:
    root = shop.home / "drills"
    return sorted(root.iterdir()) if root.exists() else []


@pytest.fixture
def both(shop: Shop) -> Shop:
    make_uploads(shop.root / "data" / "uploads" / "products")
    shop.run("backup", "--kind", "all", expect=0)
    return shop


@pytest.fixture
def snapshots(both: Shop) -> list[str]:
    return [s["snapshot_id"] for s in json_of(both, "snapshots")]


@pytest.mark.slow  # two drills and five more commands, each a process of its own
def test_a_drill_says_what_it_proved_and_is_a_job_like_the_others(both: Shop, snapshots: list[str]) -> None:
    printed = both.run("drill", expect=0).stdout
    drilled = json_of(both, "drill")

    assert "the newest snapshots restore" in printed and "integrity_check ok" in printed
    assert set(drilled) == DRILLED
    database, files = snapshots
    assert (drilled["database_snapshot_id"], drilled["files_snapshot_id"]) == (database, files)
    assert drilled["images_checked"] == drilled["images_sampled"] > 0
    assert [(j["job_type"], j["status"]) for j in json_of(both, "jobs")][:2] == [("drill", "completed")] * 2
    types = [e["type"] for e in json_of(both, "audit", "--job", drilled["job_id"])]
    assert types[0] == "DrillRequested" and types[-1] == "DrillCompleted"
    status = json_of(both, "status")
    assert {k: set(v) for k, v in status["proven"].items()} == {"database": PROOF, "files": PROOF}
    assert status["proven"]["database"]["snapshot_id"] == database
    last = status["last_drill"]
    assert (last["job_id"], last["status"]) == (drilled["job_id"], "completed")
    shown = both.run("status", expect=0).stdout
    assert f"database: snapshot {database[:12]} proven restorable " in shown
    assert f"(drill {drilled['job_id']})" in shown
    assert scratch(both) == []


def test_a_drill_that_finds_damage_exits_3_with_one_line(shop: Shop) -> None:
    made = shop.backup()["snapshot_id"]
    for pack in shop.packs():
        flip_byte(pack)

    failed = shop.run("drill", expect=3)

    assert f"database snapshot {made[:12]} does not restore" in one_line_error(failed)
    assert "no snapshot proven restorable yet" in shop.run("status", expect=0).stdout


def test_a_drill_killed_with_its_copy_in_scratch_is_finished_by_the_next_worker(both: Shop) -> None:
    killed = both.run("drill", env={**FAST_STEPS, "CAPSULE_FAULTS": "prove:database:restored"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (left,) = scratch(both)
    assert (left / "drill-copy.db").is_file()

    both.run("worker", "--until-idle", env=FAST_STEPS, expect=0, timeout=120)

    (drill,) = [j for j in json_of(both, "jobs") if j["job_type"] == "drill"]
    assert drill["status"] == "completed"
    assert scratch(both) == []
    events = json_of(both, "audit", "--job", drill["job_id"])
    completed = collections.Counter(e["data"]["step"] for e in events if e["type"] == "StepCompleted")
    assert completed == {"prove:database": 1, "prove:files": 1}


def test_ctrl_c_cancels_a_drill_and_removes_its_copy(both: Shop) -> None:
    proc = both.popen("drill", env={**FAST_STEPS, "CAPSULE_FAULTS": "prove:database:restored@pause=30"})
    deadline = time.monotonic() + 60
    while not any(p.joinpath("drill-copy.db").exists() for p in scratch(both)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert "drill job" in err and "cancelled" in err and "Traceback" not in err
    assert scratch(both) == []
    (drill,) = [j for j in json_of(both, "jobs") if j["job_type"] == "drill"]
    assert drill["status"] == "cancelled"


def test_drill_is_in_the_help() -> None:
    helped = subprocess.run([*CAPSULE, "drill", "--help"], capture_output=True, text=True, check=True)
    assert "Prove that the backups restore" in helped.stdout and "--json" in helped.stdout
