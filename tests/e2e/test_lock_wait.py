"""Waiting for a lock is bounded by CAPSULE_LOCK_WAIT_SECONDS, once, and says who holds it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

from capsule.adapters.repository.lock import lock_record, process_start_time
from tests.integration.helpers import Shop, describe, message_lines, one_line_error, running

# A time zone of its own: the holder's time must be shown in local time, not in UTC.
WAIT = {"CAPSULE_LOCK_WAIT_SECONDS": "2", "TZ": "SHOP-2"}


def _jobs(shop: Shop) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    return rows


def test_a_backup_on_a_locked_repository_waits_once_then_exits_4_naming_the_holder(shop: Shop) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    with running_plain(holder):
        lock = shop.repository / "locks" / "0holder"
        lock.write_bytes(lock_record(holder.pid, process_start_time(holder.pid), True, "rebuild-index"))

        started = time.monotonic()
        proc = shop.run("backup", env=WAIT, expect=4)
        took = time.monotonic() - started

    message = one_line_error(proc)
    assert 2 <= took < 15, (took, describe(proc))  # one wait, not one per try
    assert f"PID {holder.pid}" in message and "rebuild-index" in message, message
    assert "since" in message and "SHOP" in message and "UTC" not in message, message
    assert "capsule unlock" in message
    assert lock.exists()
    assert shop.snapshots() == []
    assert [j["status"] for j in _jobs(shop)] == ["failed"]


def test_an_overlapping_backup_of_the_same_database_fails_fast_naming_the_running_job(shop: Shop) -> None:
    first = shop.popen("backup", env={"CAPSULE_FAULTS": "store:locked@pause=30"})
    with running(first):
        deadline = time.monotonic() + 60
        while not any(j["status"] == "running" for j in shop.jobs_seen()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
        running_job = _jobs(shop)[0]["job_id"]

        started = time.monotonic()
        second = shop.run("backup", env=WAIT, expect=4)
        took = time.monotonic() - started
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
        assert first.returncode == 130

    lines = message_lines(second.stderr)
    assert took < 15, (took, describe(second))
    assert len(lines) == 2 and "waiting up to 2 s" in lines[0], describe(second)
    assert running_job in lines[1] and f"PID {first.pid}" in lines[1] and "SHOP" in lines[1], lines
    statuses = {j["job_id"]: j["status"] for j in _jobs(shop)}
    assert statuses.pop(running_job) == "interrupted"
    assert list(statuses.values()) == ["cancelled"]


class running_plain:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *_: object) -> None:
        self.proc.kill()
        self.proc.wait()


def test_a_backup_during_an_in_place_restore_waits_once_then_names_the_restore(shop: Shop) -> None:
    shop.run("backup", expect=0)
    restore = shop.popen(
        "restore", "latest", "--in-place", env={**WAIT, "CAPSULE_FAULTS": "apply:checked@pause=30"}
    )
    with running(restore):
        deadline = time.monotonic() + 60
        while not any(j["status"] == "running" and j["job_type"] == "restore" for j in shop.jobs_seen()):
            assert time.monotonic() < deadline and restore.poll() is None
            time.sleep(0.2)
        restoring = next(j["job_id"] for j in _jobs(shop) if j["job_type"] == "restore")

        started = time.monotonic()
        proc = shop.run("backup", env=WAIT, expect=4)
        took = time.monotonic() - started

    message = one_line_error(proc)
    assert took < 15, (took, describe(proc))
    assert f"restore job {restoring}" in message and f"PID {restore.pid}" in message, message
    assert "since" in message and "SHOP" in message, message
    assert len(shop.snapshots()) == 1
