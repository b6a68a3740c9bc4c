"""Automatic upload to a Google Drive destination: the real Drive backend and Google's client against
the fake Drive (tests/fakes/drive.py) on loopback, a persistent rate limit, and a worker killed
with SIGKILL in the middle of a pack."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator

import pytest

from capsule.adapters.repository.backends import open_backend
from capsule.domain.backup_job import upload_step
from capsule.orchestrator.destinations import load, open_destination
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.destinations import add_folder, add_gdrive, limit_bandwidth, resume
from capsule.orchestrator.usecases.jobs import current_status
from tests.fakes.drive import FakeDrive
from tests.integration.helpers import Shop, describe, in_process_settings
from tests.integration.test_sync import objects

CHUNK = 256 * 1024


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


def plan_of(shop: Shop, job_id: str) -> dict[str, dict[str, object]]:
    runtime = Runtime(in_process_settings(shop))
    try:
        return {s.name: dict(s.result or {}) for s in runtime.load("backup", job_id).state.steps}
    finally:
        runtime.close()


@pytest.mark.slow
def test_a_persistent_rate_limit_pauses_the_destination_and_local_backups_go_on(
    shop: Shop, fake: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = in_process_settings(shop, gdrive_attempts=1)
    monkeypatch.setenv("CAPSULE_GDRIVE_ROOT_URL", fake.url)
    add_gdrive(settings, "drive", fake.client_config(), fake.credentials().refresh_token)
    nas = shop.root / "nas"
    nas.mkdir()
    add_folder(settings, "nas", nas)
    fake.fail(1000, "rate_limit", path="/upload/")  # Drive's daily upload cap is reached

    first = back_up(settings, Backup(kind="database"))
    second = back_up(settings, Backup(kind="database"))

    steps = plan_of(shop, first.job_id)
    assert steps[upload_step("drive")]["status"] == "paused"
    assert steps[upload_step("nas")]["status"] == "uploaded"
    paused = load(settings).get("drive")
    assert paused.paused_until is not None and paused.pause_reason
    assert upload_step("drive") not in plan_of(shop, second.job_id)  # skipped while paused
    assert len(second.snapshots) == 1  # the local backup went on
    lines = [p.line for p in current_status(settings).problems]
    assert any(line.startswith("drive: behind: paused until") for line in lines), lines

    fake.reset()  # the next day: the cap is lifted
    resume(settings, "drive")
    third = back_up(settings, Backup(kind="database"))

    assert plan_of(shop, third.job_id)[upload_step("drive")]["status"] == "uploaded"
    assert objects(open_destination(settings, "drive")) == objects(open_backend(shop.repository))
    assert not [p for p in current_status(settings).problems if p.subject == "drive"]


def test_a_bandwidth_limit_is_refused_for_a_folder_and_below_the_floor_with_what_to_give(
    shop: Shop, fake: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capsule.domain.destinations import InvalidDestination

    settings = in_process_settings(shop)
    add_gdrive(settings, "drive", fake.client_config(), fake.credentials().refresh_token)
    nas = shop.root / "nas"
    nas.mkdir()
    add_folder(settings, "nas", nas)

    with pytest.raises(InvalidDestination, match="2MiB/s"):
        limit_bandwidth(settings, "drive", "fast")
    with pytest.raises(InvalidDestination, match="at least 64KiB/s"):
        limit_bandwidth(settings, "drive", "1KiB/s")
    with pytest.raises(InvalidDestination, match="Google Drive destinations"):
        limit_bandwidth(settings, "nas", "2MiB/s")
    limit_bandwidth(settings, "drive", "2MiB/s")
    assert load(settings).get("drive").bandwidth == 2 * 1024 * 1024
    limit_bandwidth(settings, "drive", "off")
    assert load(settings).get("drive").bandwidth is None


@pytest.mark.slow
def test_a_worker_killed_mid_pack_resumes_after_a_restart_sending_at_most_one_chunk_again(
    shop: Shop, fake: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPSULE_GDRIVE_ROOT_URL", fake.url)
    settings = in_process_settings(shop)
    add_gdrive(settings, "drive", fake.client_config(), fake.credentials().refresh_token)
    limit_bandwidth(settings, "drive", "256KiB/s")  # slow enough to be caught in the middle
    env = {"CAPSULE_GDRIVE_ROOT_URL": fake.url, "CAPSULE_GDRIVE_CHUNK_BYTES": str(CHUNK)}

    proc = shop.popen("backup", "--kind", "database", env=env)
    while fake.received("/upload/") < 2 * CHUNK and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    received_before = fake.received("/upload/")
    # Caught in the middle: the rest may go at full speed, rather than about 15 s at the cap.
    limit_bandwidth(settings, "drive", "off")
    done = shop.run("backup", "--kind", "database", env=env)

    assert done.returncode == 0, describe(done)
    # The killed job's snapshot was committed: its upload is taken over and finished, and the new
    # backup makes its own snapshot.
    assert "taking over backup job" in done.stderr
    assert len(shop.snapshots()) == 2
    local = open_backend(shop.repository)
    assert objects(open_destination(settings, "drive")) == objects(local)
    whole = sum(local.size(k, n) for k in ("data", "index", "snapshots", "keys") for n in local.list(k))  # type: ignore[arg-type]
    sent_again = fake.received("/upload/") - whole - local.size("config", "config")
    assert received_before >= 2 * CHUNK
    assert sent_again <= CHUNK, f"{sent_again} bytes were sent twice"
    # One resumable session a pack bigger than a chunk (a pack of lists smaller than that goes in
    # one request): the restart opened no new one.
    resumable = [n for n in local.list("data") if local.size("data", n) > CHUNK]
    assert sessions_opened(shop) == len(resumable)
    with sqlite3.connect(shop.home / "events.db") as conn:
        rows = conn.execute("SELECT data FROM events WHERE type = 'UploadSessionOpened'").fetchall()
    assert rows and all("upload_id" not in row[0] and "sealed:" in row[0] for row in rows)


def sessions_opened(shop: Shop) -> int:
    with sqlite3.connect(shop.home / "events.db") as conn:
        return int(
            conn.execute("SELECT count(*) FROM events WHERE type = 'UploadSessionOpened'").fetchone()[0]
        )
