"""The hourly database backup against restic: nothing changed, and 1% of the pages changed.

One database (generated, or a copy of `--database`), backed up once by each tool untimed; then, for
each of `--runs` rounds: `mutate` changes about 1% of its pages and each tool backs it up ("1%
changed"), then each backs it up again ("no change"). The tools take turns, each going first every
other round. restic cannot snapshot a live SQLite database, so its command copies it first with the
`sqlite3` shell's `.backup` (SQLite's backup API), and that copy is part of its time, as a shop's
hourly restic job would pay for it. `--baseline COMMAND` adds another build of Capsule to the same
turns, with a repository of its own.

`--scheduled` adds the hourly backup as a shop runs it: `capsule serve`, already running, starts
the backup at a due time of its database schedule (each round sets the schedule to the next whole
minute, so nothing else fires while the other tools run). Its wall time is from the due time to the
job's end as the event log records it; its processor time is the service's (user + system, its
sealing workers included) from just before the due time to the job's end, and again to the end of
the retention the service applies after each backup (with `keep-last` high enough that nothing is
forgotten, as in a shop's first two days). No process starts for it: what a `capsule backup`
command pays to start is not part of a scheduled backup.

Every timed command starts after `sync` and a pause (see `common.run_measured`); its wall time and
its processor time (user + system, its child processes included) come from `wait4`. The report
gives the medians, each tool's over Capsule's (above 1: Capsule is faster), and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import SETTLE_SECONDS, capsule_command, capsule_env, log, restic_env, scratch_directory
from benchmarks.posdb import generate, mutate_pages

MODES = ("no change", "1% changed")


@dataclass
class Tool:
    name: str
    argv: list[str]
    env: dict[str, str]
    runs: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {m: [] for m in MODES})


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, processor seconds) of one run of `argv`, after sync and the usual pause."""
    os.sync()
    time.sleep(SETTLE_SECONDS)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {err.strip()[-1500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def capsule_tool(name: str, command: list[str], database: Path, workdir: Path) -> Tool:
    settings = {
        "CAPSULE_DATABASE": str(database),
        "CAPSULE_REPOSITORY": str(workdir / f"{name}-repo"),
        "CAPSULE_HOME": str(workdir / f"{name}-home"),
    }
    env = capsule_env(command, settings, drop=("CAPSULE_PASSPHRASE", "CAPSULE_KEY_FILE"))
    subprocess.run([*command, "init"], env=env, check=True, capture_output=True)
    return Tool(name, [*command, "backup", "--kind", "database", "--json"], env)


def next_due(now: float, margin: float = 20.0) -> tuple[int, str]:
    """The first whole minute at least `margin` seconds after `now` (time for the service to read
    a new schedule at one of its ticks), and a cron expression, in UTC, due then and not again
    for a day."""
    due = (int(now) // 60 + 1) * 60
    if due - now < margin:
        due += 60
    at = time.gmtime(due)
    return due, f"{at.tm_min} {at.tm_hour} * * *"


class Scheduled:
    """`capsule serve` in a shop of its own, timed at the due times of its database schedule."""

    RETENTION_DONE = "retention applied"

    def __init__(self, command: list[str], database: Path, workdir: Path) -> None:
        self.tool = capsule_tool("capsule serve", command, database, workdir)
        self.command = command
        self.home = workdir / "capsule serve-home"
        self.extra: dict[str, list[float]] = {m: [] for m in MODES}
        """Per mode: processor seconds to the end of the retention applied after the backup."""
        for key, value in (
            ("timezone", "UTC"),
            ("schedules.database-full.enabled", "false"),
            ("schedules.files.enabled", "false"),
            ("schedules.drill.enabled", "false"),
            ("retention.database.keep-last", "1000"),
            ("schedules.database.cron", "0 0 1 1 *"),
        ):
            self.settings("set", key, value)
        self.proc: subprocess.Popen[str] | None = None

    def settings(self, *args: str) -> None:
        subprocess.run([*self.command, "settings", *args], env=self.tool.env, check=True, capture_output=True)

    def start(self) -> None:
        """The first backup untimed, as every tool's, then the service."""
        subprocess.run(self.tool.argv, env=self.tool.env, check=True, capture_output=True)
        err = open(self.home / "serve.err", "w")  # noqa: SIM115 - the service's, for as long as it runs
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--port", "0"],
            env=self.tool.env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("Ctrl-C or SIGTERM stops it"):
                break
        else:
            raise RuntimeError(f"capsule serve did not start: see {self.home / 'serve.err'}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=120)

    def _cpu(self) -> float:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # a dev dependency

        assert self.proc is not None
        me = psutil.Process(self.proc.pid)
        times = me.cpu_times()
        seconds = times.user + times.system + times.children_user + times.children_system
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                seconds += child_times.user + child_times.system
        return float(seconds)

    def _jobs(self) -> list[dict[str, Any]]:
        from capsule.orchestrator.reads import open_sqlite_reads
        from capsule.orchestrator.settings import Settings

        env = self.tool.env
        settings = Settings(
            database=Path(env["CAPSULE_DATABASE"]), repository=Path(env["CAPSULE_REPOSITORY"]), home=self.home
        )
        reads = open_sqlite_reads(settings)
        if reads is None:
            return []
        try:
            return [dict(row) for row in reads.list_jobs(limit=5, job_type="backup")]
        finally:
            reads.close()

    def _retention_lines(self) -> int:
        log_file = self.home / "logs" / "capsule.log"
        return log_file.read_text(errors="replace").count(self.RETENTION_DONE) if log_file.exists() else 0

    def run(self, mode: str) -> tuple[float, float]:
        """Wait for the next due time, then (wall, processor seconds) of the backup it starts."""
        due, cron = next_due(time.time())
        self.settings("set", "schedules.database.cron", cron)
        before = {j["job_id"] for j in self._jobs()}
        retained = self._retention_lines()
        os.sync()
        time.sleep(max(0.0, due - 1.5 - time.time()))
        cpu_before = self._cpu()
        deadline = due + 600
        while True:
            new = [j for j in self._jobs() if j["job_id"] not in before]
            if new and new[0]["status"] in ("completed", "failed", "cancelled"):
                break
            if time.time() > deadline:
                raise RuntimeError("the scheduled backup did not finish within 10 minutes")
            time.sleep(0.05)
        cpu_job = self._cpu() - cpu_before
        job = new[0]
        if job["status"] != "completed":
            raise RuntimeError(f"the scheduled backup {job['status']}: {job.get('error')}")
        while self._retention_lines() <= retained and time.time() < deadline:
            time.sleep(0.05)
        self.extra[mode].append(self._cpu() - cpu_before)
        wall = job["finished_at"].timestamp() - due
        return wall, cpu_job


def restic_tool(executable: str, database: Path, workdir: Path) -> Tool:
    env = restic_env(workdir / "restic-repo", workdir)
    subprocess.run([executable, "init"], env=env, check=True, capture_output=True)
    copy = workdir / "restic-source" / database.name
    copy.parent.mkdir()
    script = (
        f'rm -f "{copy}" && sqlite3 "{database}" ".backup \'{copy}\'" && '
        f'exec "{executable}" backup --quiet --host benchmark "{copy}"'
    )
    return Tool("restic", ["sh", "-c", script], env)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(tools: list[Tool], loads: dict[str, list[float]]) -> list[str]:
    capsule = tools[0]
    lines = [
        "| operation | "
        + " | ".join(f"{t.name} wall (cpu)" for t in tools)
        + " | "
        + " | ".join(f"{t.name} / {capsule.name}" for t in tools[1:])
        + " | load average |",
        "|---" * (2 * len(tools) + 1) + "|",
    ]
    for mode in MODES:
        walls = {t.name: median([w for w, _ in t.runs[mode]]) for t in tools}
        cpus = {t.name: median([c for _, c in t.runs[mode]]) for t in tools}
        cells = [f"{walls[t.name]:.2f} s ({cpus[t.name]:.2f} s)" for t in tools]
        ratios = [f"{walls[t.name] / walls[capsule.name]:.2f}x" for t in tools[1:]]
        load = loads[mode]
        lines.append(f"| {mode} | " + " | ".join(cells + ratios) + f" | {min(load):.1f}-{max(load):.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="483M", help="database to generate (default 483M)")
    parser.add_argument("--database", type=Path, help="copy this generated database instead")
    parser.add_argument("--runs", type=int, default=3, help="rounds, each timing every mode (default 3)")
    parser.add_argument("--baseline", help="another build's capsule command, timed in the same turns")
    parser.add_argument(
        "--scheduled", action="store_true", help="add the backup `capsule serve` starts at a due time"
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    command = capsule_command()
    restic = shutil.which("restic")
    if command is None or restic is None or shutil.which("sqlite3") is None:
        print("needs capsule, restic and the sqlite3 shell on PATH", file=sys.stderr)
        return 1
    with scratch_directory(args.workdir, "bench-hourly-", keep=args.keep) as workdir:
        database = workdir / "pos.db"
        if args.database:
            shutil.copyfile(args.database, database)
        else:
            log(f"generating a {args.size} database")
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            generate(database, int(float(args.size[:-1]) * units[args.size[-1].upper()]))
        tools = [capsule_tool("capsule", command, database, workdir), restic_tool(restic, database, workdir)]
        if args.baseline:
            tools.append(capsule_tool("baseline", args.baseline.split(), database, workdir))
        for tool in tools:
            wall, cpu = timed(tool.argv, tool.env)
            log(f"{tool.name}: first backup {wall:.2f} s ({cpu:.2f} s cpu)")
        scheduled = Scheduled(command, database, workdir) if args.scheduled else None
        if scheduled is not None:
            scheduled.start()
            tools.append(scheduled.tool)
        loads: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            rounds(args.runs, database, tools, scheduled, loads)
        finally:
            if scheduled is not None:
                scheduled.stop()
        size = database.stat().st_size
        lines = report(tools, loads)
        print(f"database {size / 1e6:.1f} MB, {args.runs} rounds, medians; cpu = user + system")
        print("\n".join(lines))
        if scheduled is not None:
            restic_tool_runs = tools[1].runs
            for mode in MODES:
                serve_wall = median([w for w, _ in scheduled.tool.runs[mode]])
                restic_wall = median([w for w, _ in restic_tool_runs[mode]])
                print(
                    f"capsule serve, {mode}: restic / capsule serve {restic_wall / serve_wall:.2f}x wall; "
                    f"{median(scheduled.extra[mode]):.2f} s cpu to the end of the retention applied after it"
                )
        if args.json_out:
            out: dict[str, Any] = {
                "database_bytes": size,
                "loads": loads,
                "runs": {t.name: t.runs for t in tools},
                "scheduled_with_retention_cpu": scheduled.extra if scheduled else None,
            }
            args.json_out.write_text(json.dumps(out, indent=2))
    return 0


def rounds(
    runs: int, database: Path, tools: list[Tool], scheduled: Scheduled | None, loads: dict[str, list[float]]
) -> None:
    """Each round: about 1% of the pages changed, then every tool twice ("1% changed", "no change")."""
    for n in range(runs):
        changed = mutate_pages(database, 0.01, seed=n + 1)
        log(f"round {n + 1}: {changed} pages changed")
        order = tools if n % 2 == 0 else tools[::-1]
        for mode in ("1% changed", "no change"):
            for tool in order:
                loads[mode].append(os.getloadavg()[0])
                if scheduled is not None and tool is scheduled.tool:
                    wall, cpu = scheduled.run(mode)
                else:
                    wall, cpu = timed(tool.argv, tool.env)
                tool.runs[mode].append((wall, cpu))
                log(f"{mode}, {tool.name}: {wall:.2f} s ({cpu:.2f} s cpu)")


if __name__ == "__main__":
    sys.exit(main())
