"""Ctrl-C: an interrupted backup resumes later; an interrupted restore is cancelled for good."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.integration.helpers import Shop

FAST = {"CAPSULE_STEP_LEASE_SECONDS": "2", "CAPSULE_HEARTBEAT_SECONDS": "0.5", "CAPSULE_SWEEP_SECONDS": "0.3"}


def _jobs(shop: Shop) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(shop.run("jobs", "--json", env=FAST, expect=0).stdout)
    return rows


def _interrupt_when_running(shop: Shop, *args: str, point: str) -> tuple[int, str]:
    proc = shop.popen(*args, env={**FAST, "CAPSULE_FAULTS": f"{point}@pause=30"})
    deadline = time.monotonic() + 60
    while not any(j["status"] == "running" for j in _jobs(shop)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_an_interrupted_backup_is_finished_by_the_next_worker(shop: Shop) -> None:
    code, err = _interrupt_when_running(shop, "backup", point="store:locked")

    assert code == 130
    assert "resumes" in err and "Traceback" not in err
    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=120)
    assert [j["status"] for j in _jobs(shop)] == ["completed"]
    assert len(shop.snapshots()) == 1


def test_an_interrupted_restore_is_cancelled_and_never_resumed(shop: Shop, tmp_path: Path) -> None:
    shop.run("backup", env=FAST, expect=0)
    out = tmp_path / "out"

    code, err = _interrupt_when_running(shop, "restore", "latest", "--to", str(out), point="restore:started")

    assert code == 130
    assert "cancelled" in err
    shop.run("worker", "--until-idle", env=FAST, expect=0, timeout=60)
    assert sorted(j["status"] for j in _jobs(shop)) == ["cancelled", "completed"]
    assert not (out / shop.db_name).exists()
