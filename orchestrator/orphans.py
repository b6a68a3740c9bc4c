"""Jobs whose process is gone: taken over at once instead of after their lease runs out.

A step's worker id is `<host>:<pid>:<random>`. When that host is this one and no process has that
PID any more, the step can never report again: waiting for its lease (a minute by default) would
only keep the next backup waiting behind a job that looks alive. Its attempt is recorded as
interrupted, and the next worker starts the step again at once.

A PID that a new process has taken since looks alive: that step is left to its lease, as before.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from capsule.adapters.repository.lock import pid_alive
from capsule.domain.commands import InterruptStep
from capsule.domain.jobs import StepState, current_step
from capsule.orchestrator.runtime import SYSTEM, Runtime


@dataclass(frozen=True)
class TakenOver:
    """A job whose running step was recorded as interrupted because its process is gone."""

    job_type: str
    job_id: str
    step: str
    host: str
    pid: int

    def describe(self) -> str:
        return f"{self.job_type} job {self.job_id} (PID {self.pid} on {self.host}, which is gone)"


def worker_host_pid(worker: str | None) -> tuple[str, int] | None:
    """The host and PID in a worker id, or None if it names neither."""
    if not worker:
        return None
    host, _, _token = worker.rpartition(":")
    host, _, pid = host.rpartition(":")
    if not host or not pid.isdigit():
        return None
    return host, int(pid)


def owner_gone(worker: str | None, *, hosts_gone: bool = False) -> tuple[str, int] | None:
    """(host, PID) of `worker` if its process is gone: dead on this host, or, with `hosts_gone`
    (`capsule unlock --all`: the person says the other hosts are gone), on any other host."""
    found = worker_host_pid(worker)
    if found is None:
        return None
    host, pid = found
    if host == socket.gethostname():
        return None if pid_alive(pid) else found
    return found if hosts_gone else None


def interrupt_step(
    runtime: Runtime, job_type: str, job_id: str, step: StepState, *, reason: str, actor: str
) -> bool:
    """Record `step`'s running attempt as interrupted, saying why; False if the log already had it."""
    command = InterruptStep(
        job_id=job_id, now=runtime.clock(), step=step.name, attempt=step.attempt, reason=reason
    )
    _, new = runtime.execute(job_type, job_id, lambda _: command, actor=actor)
    return bool(new)


def take_over_orphans(runtime: Runtime, *, hosts_gone: bool = False, actor: str = SYSTEM) -> list[TakenOver]:
    """Record as interrupted every running step whose process is gone; return those jobs."""
    taken = []
    for job_id, job_type in runtime.unfinished():
        loaded = runtime.load(job_type, job_id)
        step = current_step(loaded.state)
        if step is None or step.status != "running":
            continue
        gone = owner_gone(step.worker, hosts_gone=hosts_gone)
        if gone is None:
            continue
        host, pid = gone
        why = f"its process (PID {pid} on {host}) is gone"
        if interrupt_step(runtime, job_type, job_id, step, reason=why, actor=actor):
            taken.append(TakenOver(job_type, job_id, step.name, host, pid))
    return taken
