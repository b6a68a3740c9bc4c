"""The hourly database backup against restic: nothing changed, and 1% of the pages changed.

One database (generated, or a copy of `--database`), backed up once by each tool untimed; then, for
each of `--runs` rounds: `mutate` changes about 1% of its pages and each tool backs it up ("1%
changed"), then each backs it up again ("no change"). The tools take turns, each going first every
other round. restic cannot snapshot a live SQLite database, so its command copies it first with the
`sqlite3` shell's `.backup` (SQLite's backup API), and that copy is part of its time, as a shop's
hourly restic job would pay for it. `--baseline COMMAND` adds another build of Capsule to the same
turns, with a repository of its own.

Every timed command starts after `sync` and a pause (see `common.run_measured`); its wall time and
its processor time (user + system, its child processes included) come from `wait4`. The report
gives the medians, each tool's over Capsule's (above 1: Capsule is faster), and the load average.
"""

from __future__ import annotations

import argparse
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
        loads: dict[str, list[float]] = {m: [] for m in MODES}
        for n in range(args.runs):
            changed = mutate_pages(database, 0.01, seed=n + 1)
            log(f"round {n + 1}: {changed} pages changed")
            order = tools if n % 2 == 0 else tools[::-1]
            for mode in ("1% changed", "no change"):
                for tool in order:
                    loads[mode].append(os.getloadavg()[0])
                    wall, cpu = timed(tool.argv, tool.env)
                    tool.runs[mode].append((wall, cpu))
                    log(f"{mode}, {tool.name}: {wall:.2f} s ({cpu:.2f} s cpu)")
        size = database.stat().st_size
        lines = report(tools, loads)
        print(f"database {size / 1e6:.1f} MB, {args.runs} rounds, medians; cpu = user + system")
        print("\n".join(lines))
        if args.json_out:
            out: dict[str, Any] = {
                "database_bytes": size,
                "loads": loads,
                "runs": {t.name: t.runs for t in tools},
            }
            args.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
