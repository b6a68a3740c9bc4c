"""`capsule serve` and `capsule scheduler` as real processes: real signals, real HTTP on localhost.

A step is held in place with a fault point (`CAPSULE_FAULTS=store:locked@pause=S`) while the test
stops or kills the service; the next service finishes the job into exactly one snapshot. The
scheduler with a Redis broker is driven in-process with its own clock, beside a real `capsule
worker`, so that no test waits for a schedule.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker

from capsule.orchestrator import projections
from capsule.orchestrator.actors import Dispatcher
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.service import Service
from capsule.orchestrator.settings import Settings
from tests.integration.alert_servers import webhook_server
from tests.integration.helpers import CAPSULE, FAST_STEPS, Shop, describe, one_line_error
from tests.servers import require_server

pytestmark = pytest.mark.slow


class Served:
    """A `capsule serve` (or `capsule scheduler`) child, its stderr in a file, its URL once it runs."""

    def __init__(self, shop: Shop, *args: str, env: dict[str, str] | None = None) -> None:
        self.stderr_path = shop.root / f"serve-{secrets.token_hex(3)}.err"
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [*CAPSULE, *args],
                cwd=shop.root,
                env=shop.env(env),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: list[str] = []
        self.url = ""
        assert self.proc.stdout is not None
        while not self.lines or not self.lines[-1].startswith("Ctrl-C or SIGTERM stops it"):
            line = self.proc.stdout.readline()
            assert line, f"it ended before it ran:\n{self.stderr()}"
            self.lines.append(line.rstrip("\n"))
        words = [w for line in self.lines for w in line.split() if w.startswith("http://")]
        self.url = words[0] if words else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `sig`; the exit code and the rest of stdout."""
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=60)
        assert "Traceback" not in self.stderr(), self.stderr()
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def serving(shop: Shop) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        served.kill()


def serve(shop: Shop, started: list[Served], *args: str, env: dict[str, str] | None = None) -> Served:
    served = Served(shop, "serve", "--port", "0", *args, env={**FAST_STEPS, **(env or {})})
    started.append(served)
    return served


def runtime_of(shop: Shop, **extra: Any) -> Runtime:
    return Runtime(Settings(database=shop.database, repository=shop.repository, home=shop.home, **extra))


def jobs(shop: Shop) -> list[dict[str, Any]]:
    runtime = runtime_of(shop)
    try:
        return projections.list_jobs(runtime.engine, 100)
    finally:
        runtime.close()


def wait_for(shop: Shop, status: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [j for j in jobs(shop) if j["status"] == status]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no {status} job after {timeout} s: {jobs(shop)}"
        time.sleep(0.2)


def events(shop: Shop, kind: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(shop.run("audit", "--json", expect=0).stdout)
    return [e for e in rows if e["type"] == kind]


def test_serve_answers_healthz_and_backs_up_only_the_kinds_without_a_snapshot(
    shop: Shop, serving: list[Served]
) -> None:
    shop.backup()
    uploads = shop.root / "data" / "uploads" / "products"
    uploads.mkdir(parents=True)
    (uploads / "red.jpg").write_bytes(b"\xff\xd8 red shoe")

    served = serve(shop, serving)
    code, health = served.healthz()

    assert served.url.startswith("http://127.0.0.1:")
    assert "Backing up the images now, as it has no snapshot yet" in "\n".join(served.lines)
    assert not any("the database" in line for line in served.lines)
    assert any(line.startswith("No alert target is set: nobody is told") for line in served.lines)
    assert any(line.startswith("No off-site copy: the backups stay on this machine") for line in served.lines)
    assert any(line.startswith("After each backup the retention policies forget") for line in served.lines)
    assert any(line.strip().startswith("database ") and " next " in line for line in served.lines)
    assert code == 200, health
    assert health["scheduler"]["alive"] and health["worker"] == {"alive": True, "mode": "embedded"}
    last_tick = datetime.fromisoformat(health["scheduler"]["last_tick_at"])
    assert abs(datetime.now(UTC) - last_tick) < timedelta(seconds=15)
    wait_for(shop, "completed", count=2)
    code, out = served.stop()
    assert (code, out.strip()) == (0, "Stopped (SIGTERM); no step was cut short.")
    assert sorted(s["kind"] for s in shop.snapshots()) == ["database", "files"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_step_stopped_or_killed_mid_way_is_finished_by_the_next_serve(
    shop: Shop, serving: list[Served], sig: int
) -> None:
    held = serve(shop, serving, "--grace-seconds", "1", env={"CAPSULE_FAULTS": "store:locked@pause=60"})
    (job,) = wait_for(shop, "running")

    code, out = held.stop(sig)

    if sig == signal.SIGTERM:
        assert code == 0, out
        assert f"backup job {job['job_id']} still ran after 1 s and is recorded as interrupted" in out
        (interrupted,) = events(shop, "StepInterrupted")
        assert "interrupted (SIGTERM)" in json.dumps(interrupted["data"])
    else:
        assert code == -signal.SIGKILL
    again = serve(shop, serving)
    assert not any("now, as it has no snapshot yet" in line for line in again.lines)
    (done,) = wait_for(shop, "completed")
    assert done["job_id"] == job["job_id"]
    assert again.stop()[0] == 0
    assert [s["job_id"] for s in shop.snapshots()] == [job["job_id"]]


def test_a_port_in_use_is_one_line_and_exit_2(shop: Shop) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = shop.run("serve", "--port", str(port))

    assert proc.returncode == 2, describe(proc)
    assert one_line_error(proc) == (
        f"capsule: port {port} on 127.0.0.1 is already in use (another `capsule serve`?); stop that "
        "one, or give another port with --port or CAPSULE_HTTP_PORT"
    )
    assert jobs(shop) == []


def test_the_scheduler_alone_needs_a_broker(shop: Shop) -> None:
    proc = shop.run("scheduler")

    assert proc.returncode == 2, describe(proc)
    assert "run `capsule serve`" in one_line_error(proc)


def test_the_scheduler_with_redis_starts_a_job_that_a_capsule_worker_runs(shop: Shop) -> None:
    require_server("Redis", "127.0.0.1", 6379)
    url = f"redis://127.0.0.1:6379/{secrets.randbelow(15) + 1}"
    env = {"CAPSULE_BROKER_URL": url, **FAST_STEPS}
    alone = Served(shop, "scheduler", "--port", "0", env=env)
    worker = shop.popen("worker", env=env)
    runtime = runtime_of(shop, broker_url=url)
    try:
        code, health = alone.healthz()
        assert code == 200 and health["worker"] == {"alive": None, "mode": "broker"}, health
        assert "Jobs run in `capsule worker` processes (CAPSULE_BROKER_URL)." in alone.lines
        assert alone.stop() == (0, "Stopped (SIGTERM); no step was cut short.\n")
        # Its first backup went to the broker; now a schedule fires at a due time of our clock.
        wait_for(shop, "completed")
        now = datetime(2026, 12, 6, 9, 59, 30, tzinfo=UTC)
        service = Service(
            runtime,
            Dispatcher(runtime, RedisBroker(url=url)),  # type: ignore[no-untyped-call]
            sources={"database": shop.database.resolve(), "files": shop.root / "data" / "uploads"},
            machine_zone="UTC",
            embedded_worker=False,
            clock=lambda: now,
        )
        now = datetime(2026, 12, 6, 10, 0, 1, tzinfo=UTC)
        service.tick()

        (fired,) = events(shop, "ScheduleFired")
        loaded = runtime.wait(fired["data"]["job_id"], timeout=60)
        assert loaded.state.status == "completed"
        started = [e for e in events(shop, "StepStarted") if e["stream_id"].endswith(fired["data"]["job_id"])]
        assert started and all(e["actor"].startswith("system:worker:") for e in started)
        assert len(shop.snapshots()) == 2
    finally:
        runtime.close()
        alone.kill()
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        assert "Traceback" not in err, err


def test_serve_tells_the_webhook_once_when_a_backup_fails(shop: Shop, serving: list[Served]) -> None:
    shop.database.write_bytes(b"not a database at all " * 512)  # its first backup fails
    with webhook_server() as hook:
        shop.run("settings", "set", "alerts.webhook", hook.url, expect=0)
        served = serve(shop, serving)
        (failed,) = wait_for(shop, "failed")
        banner = "\n".join(served.lines)
        assert f"Alerts go to: webhook {hook.url.split('/hooks')[0]}/… (" in banner
        assert "T0K3N" not in banner + served.stderr()
        deadline = time.monotonic() + 30
        while not hook.bodies:
            assert time.monotonic() < deadline, f"no alert after 30 s:\n{served.stderr()}"
            time.sleep(0.2)
        time.sleep(1)  # a few more ticks, which must not tell it again
        assert served.stop()[0] == 0

    (alert,) = hook.bodies
    assert (alert["incident"], alert["notice"], alert["reason"]) == (
        "failed-database",
        "raised",
        "job_failed",
    )
    assert failed["job_id"] in alert["summary"]
    assert [e["data"]["incident"] for e in events(shop, "AlertRaised")] == ["failed-database"]
