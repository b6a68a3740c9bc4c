"""What an idle `capsule serve` costs, and how soon after a due time its job starts.

    python3 -m benchmarks.serve_idle idle [--seconds 600] [--workdir DIR]
    python3 -m benchmarks.serve_idle latency [--due-times 3] [--workdir DIR]

Both make the sample shop (`capsule demo create`: a 20 MiB database and 300 images) and its
repository in a scratch folder (removed at the end unless --workdir is given), then start
`capsule serve` there.

- idle: waits until the first backups (both kinds, made at start) are completed, then samples the
  process's processor time (user + system, its child processes included) and its resident memory
  (with its children's) every 5 s for `--seconds`. Prints the processor time as a share of one
  core, and the resident memory at the end and at its highest.
- latency: sets the database schedule to `* * * * *` (every minute) before starting, waits for
  `--due-times` runs after the first backups, and reads from the event log each run's due time
  (`ScheduleFired.due_at`) and the time its job's first `StepStarted` was recorded, to the
  microsecond (read in-process: `capsule audit --json` gives whole seconds).

The figures go to docs/performance.md with the date and the command that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import capsule_command

SAMPLE_SECONDS = 5.0
COMMAND: list[str] = []


def capsule(*args: str, cwd: Path) -> str:
    done = subprocess.run([*COMMAND, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"capsule {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def make_shop(root: Path) -> Path:
    shop = root / "shop"
    shop.mkdir(parents=True, exist_ok=True)
    capsule("demo", "create", cwd=shop)
    capsule("init", "--exist-ok", cwd=shop)
    return shop


@contextmanager
def serving(shop: Path) -> Any:
    """`capsule serve` in the shop, on a free port; yields the process once it runs."""
    log = open(shop / "serve.err", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*COMMAND, "serve", "--port", "0"],
        cwd=shop,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Ctrl-C or SIGTERM stops it"):
            break
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()


def jobs(shop: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(capsule("jobs", "--json", "--limit", "1000", cwd=shop))
    return rows


def wait_until_idle(shop: Path, count: int, timeout: float = 600) -> None:
    """Until `count` jobs are completed and none is unfinished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = jobs(shop)
        done = [r for r in rows if r["status"] == "completed"]
        if len(done) >= count and len(done) == len(rows):
            return
        time.sleep(2)
    raise SystemExit(f"the jobs did not finish within {timeout} s")


def cpu_and_rss(proc: psutil.Process) -> tuple[float, int]:
    """Processor seconds (user + system) and resident bytes of `proc` and its children."""
    family = [proc, *proc.children(recursive=True)]
    seconds, rss = 0.0, 0
    for p in family:
        try:
            times = p.cpu_times()
            seconds += times.user + times.system
            rss += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return seconds, rss


def idle(seconds: float, root: Path) -> dict[str, Any]:
    shop = make_shop(root)
    with serving(shop) as proc:
        wait_until_idle(shop, 2)
        watched = psutil.Process(proc.pid)
        start_cpu, _ = cpu_and_rss(watched)
        started = time.monotonic()
        rss: list[int] = []
        while (elapsed := time.monotonic() - started) < seconds:
            time.sleep(min(SAMPLE_SECONDS, seconds - elapsed))
            rss.append(cpu_and_rss(watched)[1])
        end_cpu, _ = cpu_and_rss(watched)
        elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 1),
        "cpu_seconds": round(end_cpu - start_cpu, 3),
        "cpu_percent_of_one_core": round(100 * (end_cpu - start_cpu) / elapsed, 3),
        "rss_mb_end": round(rss[-1] / 1e6, 1),
        "rss_mb_max": round(max(rss) / 1e6, 1),
        "samples": len(rss),
    }


def latency(due_times: int, root: Path) -> dict[str, Any]:
    shop = make_shop(root)
    capsule("settings", "set", "schedules.database.cron", "* * * * *", cwd=shop)
    with serving(shop):
        wait_until_idle(shop, 2)
        deadline = time.monotonic() + 90 * (due_times + 1)
        while len(fired := _events(shop, "ScheduleFired")) < due_times + 1:
            if time.monotonic() > deadline:
                raise SystemExit("the schedule did not fire as often as asked")
            time.sleep(5)
        wait_until_idle(shop, 2 + len(fired))
    started = _events(shop, "StepStarted")
    runs = []
    # The first fire may come before the first backups finished: it is coalesced into one of them.
    for event in [e for e in fired if not e["data"]["coalesced"]][-due_times:]:
        job_id = event["data"]["job_id"]
        first = min(_at(e["recorded_at"]) for e in started if e["stream_id"].endswith(job_id))
        due = _at(event["data"]["due_at"])
        runs.append(
            {
                "due_at": event["data"]["due_at"],
                "fired_after_s": round((_at(event["recorded_at"]) - due).total_seconds(), 3),
                "first_step_after_s": round((first - due).total_seconds(), 3),
            }
        )
    after = [r["first_step_after_s"] for r in runs]
    return {"runs": runs, "median_s": statistics.median(after), "max_s": max(after)}


def _events(shop: Path, kind: str) -> list[dict[str, Any]]:
    """The log's events of one type, read in-process: `capsule audit --json` gives whole seconds."""
    from capsule.orchestrator.runtime import Runtime
    from capsule.orchestrator.settings import Settings

    data = shop / "data"
    runtime = Runtime(Settings(database=data / "pos.db", repository=data / "backups", home=data / "capsule"))
    found, after = [], 0
    try:
        while batch := runtime.store.read_all(after, limit=5000):
            after = batch[-1].position
            found += [
                {"stream_id": e.stream_id, "recorded_at": e.recorded_at.isoformat(), "data": e.data}
                for e in batch
                if e.type == kind
            ]
    finally:
        runtime.close()
    return found


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["idle", "latency"])
    parser.add_argument("--seconds", type=float, default=600.0, help="idle: how long to sample")
    parser.add_argument("--due-times", type=int, default=3, help="latency: how many runs to time")
    parser.add_argument("--workdir", type=Path, help="keep the shop here instead of a scratch folder")
    args = parser.parse_args()
    command = capsule_command()
    if command is None:
        raise SystemExit("no `capsule` command here: install Capsule first (pip install -e .)")
    COMMAND[:] = command
    root = args.workdir or Path(tempfile.mkdtemp(prefix="capsule-serve-"))
    try:
        result = idle(args.seconds, root) if args.what == "idle" else latency(args.due_times, root)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    result["measured_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    result["cores"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
