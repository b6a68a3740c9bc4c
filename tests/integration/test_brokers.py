"""Distributed mode: `capsule worker` processes take steps from Redis or RabbitMQ.

The command that asks for a backup only records the request and waits; a separate worker process
runs every step. The events say which worker ran each step.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Shop, file_content_digest
from tests.servers import require_server

BROKERS = {
    "redis": ("Redis", "127.0.0.1", 6379, "redis://127.0.0.1:6379/{db}"),
    "rabbitmq": ("RabbitMQ", "127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672/"),
}


@pytest.fixture(params=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    name, host, port, url = BROKERS[request.param]
    require_server(name, host, port)
    return url.format(db=secrets.randbelow(15) + 1)


@pytest.fixture
def worker(shop: Shop, broker_url: str) -> Iterator[dict[str, str]]:
    env = {"CAPSULE_BROKER_URL": broker_url, "CAPSULE_SWEEP_SECONDS": "1"}
    proc = shop.popen("worker", "--threads", "2", env=env)
    try:
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, err = proc.communicate()
        assert "Traceback" not in err, err


def test_a_worker_process_runs_backup_and_restore_steps(
    shop: Shop, worker: dict[str, str], tmp_path: Path
) -> None:
    result = json.loads(shop.run("backup", "--json", env=worker, expect=0, timeout=120).stdout)
    out = tmp_path / "out"
    shop.run("restore", "latest", "--to", str(out), env=worker, expect=0, timeout=120)

    assert file_content_digest(out / shop.db_name, immutable=True) == file_content_digest(
        shop.database, immutable=True
    )
    events = json.loads(shop.run("audit", "--json", env=worker, expect=0).stdout)
    started = [e for e in events if e["type"] == "StepStarted"]
    assert len(started) == 3  # store, commit, restore
    workers = {e["actor"] for e in started}
    assert len(workers) == 1 and next(iter(workers)).startswith("system:worker:")
    requests = [e for e in events if e["type"] in ("BackupRequested", "RestoreRequested")]
    assert all(e["actor"].startswith("person:") for e in requests)
    assert result["job_id"] in {e["stream_id"].split("-", 1)[1] for e in events}
