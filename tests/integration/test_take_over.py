"""A `capsule backup` finishes an unfinished backup of the same database instead of queueing
behind it only when no live process is on its way to the job's next step."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from capsule.domain.commands import CompleteStep, StartStep
from capsule.orchestrator.jobrunner import continue_interrupted_backup
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings


def _between_steps(runtime: Runtime, source: str, worker: str) -> str:
    """A backup whose first step `worker` completed, its next one not started yet."""
    job_id = runtime.request_backup(source=source, actor="person:test")
    step = runtime.load("backup", job_id).state.steps[0].name
    now = runtime.clock()
    for command in (
        StartStep(job_id=job_id, now=now, step=step, attempt=1, worker=worker, lease=runtime.lease),
        CompleteStep(job_id=job_id, now=now, step=step, attempt=1),
    ):
        runtime.execute("backup", job_id, lambda _, c=command: c, actor=f"system:worker:{worker}")
    return job_id


def test_a_backup_between_two_steps_of_a_live_process_is_left_to_it(tmp_path: Path) -> None:
    # Two `capsule backup` of one database at once: the second must not take over the first's job
    # in the instant between its store and commit steps (both then reported the first's snapshot).
    settings = Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")
    source = str(settings.database)
    host = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runtime = Runtime(settings)
    try:
        live_job = _between_steps(runtime, source, f"{host}:{alive.pid}:a1b2c3")
        assert continue_interrupted_backup(runtime, source, "database", False) is None
    finally:
        alive.kill()
        alive.wait()
        runtime.close()
    runtime = Runtime(settings)
    try:
        # The same job, its process now gone: it is finished by the backup asked for now.
        assert continue_interrupted_backup(runtime, source, "database", False) == live_job
        other = Settings(database=tmp_path / "other.db", repository=settings.repository, home=settings.home)
        gone_job = _between_steps(runtime, str(other.database), f"{host}:{dead.pid}:d4e5f6")
        assert continue_interrupted_backup(runtime, str(other.database), "database", False) == gone_job
    finally:
        runtime.close()
