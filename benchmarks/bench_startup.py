"""How long `capsule --help`, `capsule snapshots` and `capsule status` take, against restic.

    python3 -m benchmarks.bench_startup [--runs 5] [--workdir DIR] [--keep] [--json-out FILE]
                                        [--images 50] [--size 20M] [--capsule COMMAND]
                                        [--baseline COMMAND]

In a scratch folder (removed at the end unless --keep), the sample shop (`capsule demo create`)
is backed up twice into a Capsule repository (both kinds, then the database again) and twice into a
restic repository (the same database file and images folder). Then each row's two commands run
`--runs` times, the tools taking turns (each goes first every other run), after one untimed run of
each to warm the page cache; the table gives each tool's median wall time, the ratio of Capsule's
to restic's, and the target:

| row | Capsule | restic | target |
|---|---|---|---|
| help | `capsule --help` | `restic --help` | < 0.15 s |
| snapshots | `capsule snapshots` | `restic snapshots` | < 0.3 s |
| status | `capsule status` | `restic snapshots --latest 1` | < 0.3 s |

restic has no `status`: its nearest answer, the newest snapshot of each source, stands in. The
median processor time (user + system) of each command is printed too: on a busy machine the wall
time waits for a core, the processor time much less. Capsule runs as the `capsule` script beside
this interpreter (or `--capsule`), with the installed package's modules compiled first, as
`pip install` leaves them. `--baseline` adds another build of Capsule to the turns (say, the build
before a change, through a script that puts its checkout first on `sys.path`): on a busy machine
two builds compare fairly only when timed in the same turns. The exit status is 1 if a command
failed, 0 otherwise; a missed target is a figure, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    align_columns,
    capsule_command,
    capsule_env,
    compile_checkout,
    log,
    restic_env,
    scratch_directory,
)


@dataclass(frozen=True)
class Row:
    name: str
    capsule: tuple[str, ...]
    restic: tuple[str, ...]
    target_seconds: float


ROWS = (
    Row("help", ("--help",), ("--help",), 0.15),
    Row("snapshots", ("snapshots",), ("snapshots",), 0.3),
    Row("status", ("status",), ("snapshots", "--latest", "1"), 0.3),
)


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "median_seconds": statistics.median(self.wall),
            "median_cpu_seconds": statistics.median(self.cpu),
            "runs_seconds": [round(s, 4) for s in self.wall],
        }


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and processor seconds of one run; the command must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        shown = done.stderr.decode(errors="replace").strip()[-2000:]
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {shown}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def prepare(
    workdir: Path, capsule: list[str], restic: str, size: str, images: int
) -> tuple[dict[str, str], ...]:
    shop = workdir / "shop"
    shop.mkdir(parents=True)
    settings = {
        "CAPSULE_DATABASE": str(shop / "pos.db"),
        "CAPSULE_UPLOADS": str(shop / "uploads"),
        "CAPSULE_REPOSITORY": str(workdir / "capsule-repo"),
        "CAPSULE_HOME": str(workdir / "capsule-home"),
    }
    cenv = capsule_env(capsule, settings, drop=[k for k in os.environ if k.startswith("CAPSULE_")])
    renv = restic_env(workdir / "restic-repo", workdir)
    log(f"making the sample shop ({size} database, {images} images)")
    run([*capsule, "demo", "create", "--size", size, "--images", str(images)], cenv, workdir)
    run([*capsule, "init"], cenv, workdir)
    run([*capsule, "backup", "--kind", "all"], cenv, workdir)
    run([*capsule, "backup"], cenv, workdir)
    run([restic, "init"], renv, workdir)
    for _ in range(2):
        run([restic, "backup", "--host", "pos", str(shop / "pos.db")], renv, workdir)
    run([restic, "backup", "--host", "pos", str(shop / "uploads")], renv, workdir)
    return cenv, renv


def measure(
    capsule: list[str],
    restic: str,
    *,
    cenv: dict[str, str],
    renv: dict[str, str],
    cwd: Path,
    runs: int,
    baseline: list[str] | None = None,
) -> dict[str, Any]:
    """Each row's commands `runs` times, the tools taking turns; `baseline`, another build of
    Capsule, takes its turn too, on the same shop."""
    results: dict[str, Any] = {}
    for row in ROWS:
        argv = {"capsule": [*capsule, *row.capsule], "restic": [restic, *row.restic]}
        env = {"capsule": cenv, "restic": renv}
        if baseline is not None:
            argv["baseline"], env["baseline"] = [*baseline, *row.capsule], cenv
        tools = list(argv)
        timings = {tool: Timings() for tool in tools}
        for tool in tools:  # warm the page cache, untimed
            timed(argv[tool], env[tool], cwd)
        for n in range(runs):
            for tool in tools[n % len(tools) :] + tools[: n % len(tools)]:
                wall, cpu = timed(argv[tool], env[tool], cwd)
                timings[tool].wall.append(wall)
                timings[tool].cpu.append(cpu)
        figures = {tool: timings[tool].summary() for tool in tools}
        results[row.name] = {
            "capsule_command": " ".join(["capsule", *row.capsule]),
            "restic_command": " ".join(["restic", *row.restic]),
            **figures,
            "ratio": figures["capsule"]["median_seconds"] / figures["restic"]["median_seconds"],
            "target_seconds": row.target_seconds,
            "passed": figures["capsule"]["median_seconds"] < row.target_seconds,
        }
        shown = ", ".join(f"{tool} {figures[tool]['median_seconds']:.3f} s" for tool in tools)
        log(f"{row.name}: {shown}")
    return results


def report(results: dict[str, Any], runs: int) -> str:
    with_baseline = all("baseline" in r for r in results.values())
    head = ["command", "Capsule", "restic", "Capsule / restic", "Capsule cpu", "restic cpu", "target"]
    if with_baseline:
        head[1:1] = ["baseline", "baseline cpu"]
    table = [head]
    for name, r in results.items():
        cells = [
            r["capsule_command"] + (f" ({r['restic_command']})" if name == "status" else ""),
            f"{r['capsule']['median_seconds']:.3f} s",
            f"{r['restic']['median_seconds']:.3f} s",
            f"{r['ratio']:.1f}",
            f"{r['capsule']['median_cpu_seconds']:.3f} s",
            f"{r['restic']['median_cpu_seconds']:.3f} s",
            f"< {r['target_seconds']} s {'PASS' if r['passed'] else 'FAIL'}",
        ]
        if with_baseline:
            cells[1:1] = [
                f"{r['baseline']['median_seconds']:.3f} s",
                f"{r['baseline']['median_cpu_seconds']:.3f} s",
            ]
        table.append(cells)
    return "\n".join([f"medians of {runs} runs, the tools taking turns", *align_columns(table)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (at least 3)")
    parser.add_argument("--workdir", type=Path, help="where to make the scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--size", default="20M", help="the sample database's size (capsule demo create)")
    parser.add_argument("--images", type=int, default=50, help="the sample shop's images")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another build's Capsule command, timed in the same turns (e.g. the build before a change)",
    )
    parser.add_argument(
        "--capsule",
        type=Path,
        help="the Capsule command to time (default: the `capsule` script beside this interpreter), "
        "e.g. another build's, to time two builds one after the other",
    )
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be 3 or more: a median of fewer decides little")
    capsule = [str(args.capsule)] if args.capsule else capsule_command()
    restic = shutil.which("restic")
    if capsule is None or restic is None:
        print("both `capsule` and `restic` are needed", file=sys.stderr)
        return 1
    compile_checkout()
    with scratch_directory(args.workdir, "bench-startup-", keep=args.keep) as workdir:
        cenv, renv = prepare(workdir, capsule, restic, args.size, args.images)
        baseline = [str(args.baseline)] if args.baseline else None
        results = measure(
            capsule, restic, cenv=cenv, renv=renv, cwd=workdir, runs=args.runs, baseline=baseline
        )
    print(report(results, args.runs))
    if args.json_out:
        args.json_out.write_text(json.dumps({"runs": args.runs, "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
