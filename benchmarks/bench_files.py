"""Files benchmark: Capsule, restic and borg backing up a shop's folder of product images.

    python -m benchmarks.bench_files [--files 20000] [--tools capsule,restic,borg] [--smoke]
    python -m benchmarks.bench_files scale [--files 100000] [--tools capsule,restic]
    python -m benchmarks.bench_files generate DIR [--files N] [--seed S] [--total SIZE] [--small]
    python -m benchmarks.bench_files mutate DIR [--fraction 0.01] [--seed S]

The default run, for each tool in the same scratch directory: first backup, a backup with
nothing changed, a backup after 1% of the files changed, a restore of everything (compared
file by file with the source) and of one file, both with a restore filter and to standard
output. ``scale`` backs up 100,000 small files twice for the memory and no-change targets.
The page cache is dropped before every step when the machine allows it. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import (
    MB,
    Benchmark,
    CommandResult,
    align_columns,
    capsule_command,
    capsule_env,
    directory_bytes,
    drop_page_cache,
    fmt,
    fmt_mb,
    last_json_object,
    log,
    peak_rss,
    restic_env,
    restic_summary,
    run_measured,
    scratch_directory,
)
from capsule.adapters.sampleshop.images import (
    IMAGE_SIZES,
    SMALL_SIZES,
    SizeModel,
    Tree,
    TreeFile,
    generate_tree,
)
from capsule.domain.sizes import parse_size

KB = 1000
DEFAULT_FILES = 20_000
SCALE_FILES = 100_000
SMOKE_FILES = 300
SMOKE_SCALE_FILES = 2_000
MUTATE_FRACTION = 0.01
PROBE_SIZE = 1 * MB
TARGET_RSS_BYTES = 300 * MB
TARGET_NO_CHANGE_SECONDS = 2.0
TOOL_NAMES = ("capsule", "restic", "borg")
BORG_COMPRESSION = "auto,zstd,3"


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root``, as sorted relative paths with "/" separators."""
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        relative = Path(folder).relative_to(root)
        found.extend(
            (relative / name).as_posix() for name in sorted(names) if (Path(folder) / name).is_file()
        )
    return sorted(found)


@dataclass
class Mutation:
    paths: list[str]
    appended: int  # how many of them grew at the end (the rest were rewritten in the middle)
    bytes_written: int
    changed_file_bytes: int  # the changed files' sizes, after the change

    def figures(self, files: int) -> dict[str, Any]:
        return {
            "files_changed": len(self.paths),
            "files_total": files,
            "appended": self.appended,
            "bytes_written": self.bytes_written,
            "changed_file_bytes": self.changed_file_bytes,
        }


def mutate_tree(root: Path, fraction: float = MUTATE_FRACTION, seed: int = 0) -> Mutation:
    """Change ``fraction`` of the files: one in ten grows at the end, the others get a few KB
    rewritten in the middle. Each changed file's modification time moves forward."""
    rng = random.Random(f"{seed}:mutate")
    files = list_files(root)
    count = min(len(files), max(1, round(len(files) * fraction)))
    chosen = sorted(rng.sample(files, count))
    mutation = Mutation(chosen, 0, 0, 0)
    for index, relative in enumerate(chosen):
        path = root / relative
        before = path.stat()
        if index % 10 == 0:
            data = rng.randbytes(rng.randint(4 * KB, 64 * KB))
            with open(path, "ab") as out:
                out.write(data)
            mutation.appended += 1
        else:
            data = rng.randbytes(max(1, min(before.st_size // 4, rng.randint(1 * KB, 32 * KB))))
            with open(path, "r+b") as out:
                out.seek(before.st_size // 2 - len(data) // 2)
                out.write(data)
        mtime = max(before.st_mtime_ns + 1_000_000_000, time.time_ns())
        os.utime(path, ns=(mtime, mtime))
        mutation.bytes_written += len(data)
        mutation.changed_file_bytes += path.stat().st_size
    return mutation


def _digest(path: Path) -> tuple[int, str]:
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()


def hash_tree(root: Path) -> dict[str, tuple[int, str]]:
    """Size and SHA-256 of every file under ``root``, by relative path."""
    paths = list_files(root)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(paths, pool.map(lambda p: _digest(root / p), paths), strict=True))


def compare_tree(root: Path, expected: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """What differs between the tree under ``root`` and ``expected`` (``ok`` when nothing)."""
    found = hash_tree(root)
    missing = sorted(expected.keys() - found.keys())
    extra = sorted(found.keys() - expected.keys())
    different = sorted(p for p in expected.keys() & found.keys() if found[p] != expected[p])
    return {
        "ok": not (missing or extra or different),
        "files": len(found),
        "bytes": sum(size for size, _ in found.values()),
        "missing": len(missing),
        "extra": len(extra),
        "different": len(different),
        "examples": (missing + extra + different)[:3],
    }


def choose_probe(files: list[TreeFile]) -> TreeFile:
    """The file restored alone: about 1 MB, as deep in the tree as such a file goes."""
    near = [f for f in files if PROBE_SIZE / 2 <= f.size <= PROBE_SIZE * 2] or files
    return min(near, key=lambda f: (-f.path.count("/"), abs(f.size - PROBE_SIZE), f.path))


# --- tools --------------------------------------------------------------------------------------


class FilesTool(Protocol):
    name: str
    repository: Path
    one_file_commands: tuple[str, str]  # how it restores one file: with a filter, to stdout

    def describe(self) -> str: ...

    def init(self) -> CommandResult: ...

    def backup(self) -> tuple[CommandResult, dict[str, Any]]: ...

    def restore_all(self, target: Path) -> CommandResult: ...

    def restore_one(self, target: Path, relative: str) -> CommandResult: ...

    def cat_one(self, relative: str, out: Path) -> CommandResult: ...


class CapsuleFiles:
    name = "capsule"
    one_file_commands = ("restore --include", "cat")

    def __init__(self, command: list[str], tree: Path, workdir: Path) -> None:
        self.command = command
        self.workdir = workdir
        self.repository = workdir / "capsule-repo"
        self.home = workdir / "capsule-home"
        self.snapshot = "latest"
        self.env = capsule_env(
            command,
            {
                "CAPSULE_UPLOADS": str(tree),
                "CAPSULE_REPOSITORY": str(self.repository),
                "CAPSULE_HOME": str(self.home),
                # No database in this benchmark: a path where there is none.
                "CAPSULE_DATABASE": str(workdir / "no-database" / "pos.db"),
                # At the priority restic runs at: a backup lowers its own (nice 10) for the till's
                # sake, which on a busy machine would be measured instead of the work itself.
                "CAPSULE_NICE": "0",
            },
            drop=("CAPSULE_PASSPHRASE", "CAPSULE_KEY_FILE"),
        )

    def _run(self, *args: str, stdout_path: Path | None = None) -> CommandResult:
        # In the scratch directory, so that no capsule.toml around the caller changes a setting.
        return run_measured([*self.command, *args], self.env, cwd=self.workdir, stdout_path=stdout_path)

    def describe(self) -> str:
        try:
            version = importlib.metadata.version("capsule-backup")
        except importlib.metadata.PackageNotFoundError:
            version = "from this checkout"
        how = "installed script" if self.command[0] != sys.executable else "capsule.api.cli module"
        return f"capsule-backup {version} ({how})"

    def init(self) -> CommandResult:
        return self._run("init")

    def backup(self) -> tuple[CommandResult, dict[str, Any]]:
        result = self._run("backup", "--kind", "files", "--json")
        report = last_json_object(result.stdout)
        self.snapshot = str(report.get("snapshot_id") or "latest")
        return result, report

    def restore_all(self, target: Path) -> CommandResult:
        return self._run("restore", self.snapshot, "--to", str(target))

    def restore_one(self, target: Path, relative: str) -> CommandResult:
        return self._run("restore", self.snapshot, "--to", str(target), "--include", relative)

    def cat_one(self, relative: str, out: Path) -> CommandResult:
        return self._run("cat", self.snapshot, relative, stdout_path=out)


class ResticFiles:
    name = "restic"
    one_file_commands = ("restore --include", "dump")

    def __init__(self, executable: str, tree: Path, workdir: Path) -> None:
        self.executable = executable
        self.tree = tree
        self.repository = workdir / "restic-repo"
        self.snapshot = "latest"
        self.env = restic_env(self.repository, workdir)

    def _run(self, *args: str, stdout_path: Path | None = None) -> CommandResult:
        return run_measured([self.executable, *args], self.env, stdout_path=stdout_path)

    def describe(self) -> str:
        version = self._run("version").stdout.strip()
        try:
            config = json.loads(self._run("cat", "config").stdout)
        except Exception:  # before init, or an old restic
            return f"{version}; compression: auto (the default)"
        return f"{version}; repository v{config.get('version')}, compression: auto (the default)"

    def init(self) -> CommandResult:
        return self._run("init")

    def backup(self) -> tuple[CommandResult, dict[str, Any]]:
        result = self._run("backup", "--json", "--host", "benchmark", str(self.tree))
        summary = restic_summary(result.stdout)
        self.snapshot = str(summary.get("snapshot_id") or "latest")
        return result, summary

    def restore_all(self, target: Path) -> CommandResult:
        return self._run("restore", self.snapshot, "--target", str(target))

    def restore_one(self, target: Path, relative: str) -> CommandResult:
        return self._run(
            "restore", self.snapshot, "--target", str(target), "--include", str(self.tree / relative)
        )

    def cat_one(self, relative: str, out: Path) -> CommandResult:
        return self._run("dump", self.snapshot, str(self.tree / relative), stdout_path=out)


class BorgFiles:
    name = "borg"
    one_file_commands = ("extract PATH", "extract --stdout")

    def __init__(self, executable: str, tree: Path, workdir: Path) -> None:
        self.executable = executable
        self.tree = tree
        self.repository = workdir / "borg-repo"
        self.archives = 0
        self.env = dict(os.environ)
        self.env.update(
            BORG_PASSPHRASE="benchmark",
            BORG_BASE_DIR=str(workdir / "borg-home"),  # its cache, config and security folders
            BORG_DISPLAY_PASSPHRASE="no",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        )

    def _run(self, *args: str, cwd: Path | None = None, stdout_path: Path | None = None) -> CommandResult:
        return run_measured([self.executable, *args], self.env, cwd=cwd, stdout_path=stdout_path)

    @property
    def _archive(self) -> str:
        return f"{self.repository}::files-{self.archives}"

    def _member(self, relative: str) -> str:
        # borg stores absolute paths without their leading "/".
        return (self.tree / relative).relative_to(self.tree.anchor).as_posix()

    def describe(self) -> str:
        version = self._run("--version").stdout.strip()
        return f"{version}; encryption repokey-blake2, compression {BORG_COMPRESSION}"

    def init(self) -> CommandResult:
        return self._run("init", "--encryption=repokey-blake2", str(self.repository))

    def backup(self) -> tuple[CommandResult, dict[str, Any]]:
        self.archives += 1
        result = self._run(
            "create", "--json", "--compression", BORG_COMPRESSION, self._archive, str(self.tree)
        )
        return result, last_json_object(result.stdout)

    def restore_all(self, target: Path) -> CommandResult:
        return self._run("extract", self._archive, cwd=target)

    def restore_one(self, target: Path, relative: str) -> CommandResult:
        return self._run("extract", self._archive, self._member(relative), cwd=target)

    def cat_one(self, relative: str, out: Path) -> CommandResult:
        return self._run("extract", "--stdout", self._archive, self._member(relative), stdout_path=out)


def select_tools(tree: Path, workdir: Path, wanted: Iterable[str]) -> tuple[list[FilesTool], dict[str, str]]:
    """The wanted tools found on this machine, in the order capsule, restic, borg; the others' reasons."""
    tools: list[FilesTool] = []
    missing: dict[str, str] = {}
    for name in (n for n in TOOL_NAMES if n in set(wanted)):
        if name == "capsule":
            command = capsule_command()
            if command:
                tools.append(CapsuleFiles(command, tree, workdir))
            else:
                missing[name] = "capsule CLI not found (pip install -e .)"
        elif executable := shutil.which(name):
            tools.append(
                ResticFiles(executable, tree, workdir)
                if name == "restic"
                else BorgFiles(executable, tree, workdir)
            )
        else:
            missing[name] = f"{name} not found on PATH (apt-get install restic borgbackup)"
    return tools, missing


# --- steps --------------------------------------------------------------------------------------


class WrongRestoreError(RuntimeError):
    """A restore finished, but what it wrote is not what was backed up."""


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def locate_tree_root(target: Path, tree: Path, sample: str) -> Path:
    """Where under ``target`` a tool put the tree: restic and borg recreate its absolute path."""
    for candidate in (target, target / tree.relative_to(tree.anchor)):
        if (candidate / sample).is_file():
            return candidate
    for found in target.rglob(Path(sample).name):
        if found.as_posix().endswith("/" + sample):
            return Path(found.as_posix()[: -len(sample) - 1])
    raise WrongRestoreError(f"{sample} is nowhere under the restore target")


@dataclass
class Steps:
    """The steps of both modes, for any tool; the source's state between them."""

    tree: Path
    workdir: Path
    drop_caches: bool
    source_bytes: int
    expected: dict[str, tuple[int, str]] = field(default_factory=dict)
    probe: str = ""

    def _cold(self) -> None:
        if self.drop_caches and (reason := drop_page_cache()):
            raise RuntimeError(f"the page cache could not be dropped this time: {reason}")

    def source_changed(self) -> None:
        self.expected = hash_tree(self.tree)
        self.source_bytes = sum(size for size, _ in self.expected.values())

    def init(self, tool: FilesTool) -> dict[str, Any]:
        result = tool.init()
        return {"seconds": round(result.seconds, 3), "peak_rss_bytes": result.peak_rss_bytes}

    def backup(self, tool: FilesTool) -> dict[str, Any]:
        before = directory_bytes(tool.repository)
        self._cold()
        result, report = tool.backup()
        after = directory_bytes(tool.repository)
        figures: dict[str, Any] = {
            "seconds": round(result.seconds, 3),
            "source_bytes": self.source_bytes,
            "mb_per_s": round(self.source_bytes / MB / result.seconds, 2),
            "peak_rss_bytes": result.peak_rss_bytes,
            "repository_bytes_before": before,
            "repository_bytes_after": after,
            "repository_growth_bytes": after - before,
            "report": report,
        }
        if isinstance(warnings := report.get("warnings"), list):
            figures["warnings"] = len(warnings)
            figures["warning_examples"] = [str(w)[:200] for w in warnings[:3]]
        return figures

    def restore_all(self, tool: FilesTool) -> dict[str, Any]:
        target = _fresh_dir(self.workdir / f"restore-{tool.name}")
        self._cold()
        result = tool.restore_all(target)
        started = time.perf_counter()
        comparison = compare_tree(locate_tree_root(target, self.tree, self.probe), self.expected)
        if not comparison["ok"]:
            raise WrongRestoreError(
                f"the restored tree differs from the source: {comparison['missing']} missing,"
                f" {comparison['extra']} extra, {comparison['different']} different"
                f" (e.g. {', '.join(comparison['examples'])})"
            )
        shutil.rmtree(target)  # verified; the next tool's restore needs the disk space
        return {
            "seconds": round(result.seconds, 3),
            "bytes": comparison["bytes"],
            "files": comparison["files"],
            "mb_per_s": round(comparison["bytes"] / MB / result.seconds, 2),
            "peak_rss_bytes": result.peak_rss_bytes,
            "verified": True,
            "verify_seconds": round(time.perf_counter() - started, 3),
        }

    def _check_one(self, path: Path) -> None:
        if (got := _digest(path)) != self.expected[self.probe]:
            size, digest = self.expected[self.probe]
            raise WrongRestoreError(
                f"{self.probe}: got {got[0]} bytes, SHA-256 {got[1][:16]}…;"
                f" expected {size} bytes, SHA-256 {digest[:16]}…"
            )

    def restore_one(self, tool: FilesTool) -> dict[str, Any]:
        target = _fresh_dir(self.workdir / f"restore-one-{tool.name}")
        self._cold()
        result = tool.restore_one(target, self.probe)
        restored = list_files(target)
        if len(restored) != 1 or not (restored[0] == self.probe or restored[0].endswith("/" + self.probe)):
            raise WrongRestoreError(f"expected {self.probe} alone, got {len(restored)} files: {restored[:3]}")
        self._check_one(target / restored[0])
        shutil.rmtree(target)
        return {
            "seconds": round(result.seconds, 3),
            "cpu_seconds": round(result.cpu_seconds, 3),
            "peak_rss_bytes": result.peak_rss_bytes,
            "bytes": self.expected[self.probe][0],
            "command": tool.one_file_commands[0],
        }

    def cat_one(self, tool: FilesTool) -> dict[str, Any]:
        out = self.workdir / f"cat-{tool.name}.bin"
        self._cold()
        result = tool.cat_one(self.probe, out)
        self._check_one(out)
        out.unlink()
        return {
            "seconds": round(result.seconds, 3),
            "cpu_seconds": round(result.cpu_seconds, 3),
            "peak_rss_bytes": result.peak_rss_bytes,
            "bytes": self.expected[self.probe][0],
            "command": tool.one_file_commands[1],
        }


# --- the two modes ------------------------------------------------------------------------------


@dataclass
class Options:
    files: int
    seed: int
    workdir: Path
    tools: list[str]
    warm: bool  # keep the page cache between steps
    one_file_runs: int = 3  # rounds of the one-file steps, the tools taking turns
    runs: int = 1  # scale: rounds of first and no-change backup, each in fresh repositories


def _prepare(
    mode: str, options: Options, sizes: SizeModel
) -> tuple[dict[str, Any], Tree, Steps, Benchmark[FilesTool]]:
    """Generate the tree, find the tools, decide about the page cache; init every tool."""
    workdir, seed = options.workdir, options.seed
    log(f"generating {options.files} files")
    tree = generate_tree(workdir / "uploads", options.files, seed, sizes=sizes)
    log(f"{tree.total_bytes / MB:.1f} MB, {tree.folders} folders, in {tree.seconds:.1f} s")
    cache_reason = "not asked (--warm)" if options.warm else drop_page_cache()
    settings: dict[str, Any] = {
        "mode": mode,
        "files": len(tree.files),
        "tree_bytes": tree.total_bytes,
        "folders": tree.folders,
        "compressible_files": tree.text_files,
        "seed": seed,
        "generate_seconds": round(tree.seconds, 2),
        "cpu_count": os.cpu_count(),
        "page_cache": "dropped before every step" if cache_reason is None else f"warm ({cache_reason})",
    }
    tools, missing = select_tools(tree.root, workdir, options.tools)
    steps = Steps(tree.root, workdir, cache_reason is None, tree.total_bytes)
    bench: Benchmark[FilesTool] = Benchmark(tools, log)
    bench.step("init", steps.init)
    for tool in bench.tools:
        settings[f"{tool.name}_version"] = tool.describe()
    for name, reason in missing.items():
        bench.results[name] = {"error": reason}
    return settings, tree, steps, bench


def run_files(options: Options) -> dict[str, Any]:
    settings, tree, steps, bench = _prepare("files", options, IMAGE_SIZES)
    probe = choose_probe(tree.files)
    steps.probe = probe.path
    settings["probe_file"] = {"path": probe.path, "bytes": probe.size}
    bench.step("first_backup", steps.backup)
    bench.step("no_change_backup", steps.backup, required=False)
    log(f"changing {MUTATE_FRACTION:.0%} of the files")
    mutation = mutate_tree(tree.root, MUTATE_FRACTION, options.seed)
    steps.source_changed()
    bench.step("changed_backup", steps.backup, required=False)
    bench.step("restore_all", steps.restore_all, required=False)
    settings["one_file_runs"] = options.one_file_runs
    for label, action in (("restore_one", steps.restore_one), ("cat_one", steps.cat_one)):
        alternate(bench, label, action, options.one_file_runs)
    results = {"settings": settings, "mutation": mutation.figures(len(tree.files)), "tools": bench.results}
    results["targets"] = evaluate_targets(results)
    return results


def alternate(
    bench: Benchmark[FilesTool], label: str, action: Callable[[FilesTool], dict[str, Any]], runs: int
) -> None:
    """`runs` rounds of a short step, the tools taking turns in each; the medians of time and CPU
    time, every run kept. One run of a command this short says little on a shared machine."""
    figures: dict[str, list[dict[str, Any]]] = {tool.name: [] for tool in bench.tools}
    failed: dict[str, str] = {}
    for round_number in range(runs):
        for tool in bench.tools:
            if tool.name in failed:
                continue
            bench.log(f"{tool.name}: {label} ({round_number + 1} of {runs})")
            try:
                figures[tool.name].append(action(tool))
            except Exception as exc:
                bench.log(f"{tool.name}: {label} FAILED: {exc}")
                failed[tool.name] = str(exc)
    for name, done in figures.items():
        if name in failed:
            bench.results[name][label] = {"failed": failed[name]}
        elif done:
            bench.results[name][label] = {
                **done[-1],
                "seconds": statistics.median(d["seconds"] for d in done),
                "cpu_seconds": statistics.median(d["cpu_seconds"] for d in done),
                "peak_rss_bytes": max(d["peak_rss_bytes"] for d in done),
                "runs_seconds": [d["seconds"] for d in done],
                "runs_cpu_seconds": [d["cpu_seconds"] for d in done],
            }


def run_scale(options: Options) -> dict[str, Any]:
    settings, _, steps, bench = _prepare("scale", options, SMALL_SIZES)
    bench.step("first_backup", steps.backup)
    bench.step("no_change_backup", steps.backup, required=False)
    rounds = {tool.name: [dict(bench.results[tool.name])] for tool in bench.tools}
    for number in range(1, options.runs):
        # The tools take turns: each goes first in every other round, in fresh repositories.
        order = bench.tools[::-1] if number % 2 else list(bench.tools)
        for tool in order:
            shutil.rmtree(tool.repository, ignore_errors=True)
            if (home := getattr(tool, "home", None)) is not None:
                shutil.rmtree(home, ignore_errors=True)  # its key file would refuse a new init
        again: Benchmark[FilesTool] = Benchmark(list(order), log)
        again.step("init", steps.init)
        again.step("first_backup", steps.backup)
        again.step("no_change_backup", steps.backup, required=False)
        for tool in order:
            rounds[tool.name].append(again.results[tool.name])
    if options.runs > 1:
        settings["runs"] = options.runs
        for name, each in rounds.items():
            bench.results[name].update(_medians(each))
    results = {"settings": settings, "tools": bench.results}
    results["targets"] = evaluate_targets(results)
    return results


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each step's figures from the median round by time, with every round's time under `runs`
    (a step that failed in any round is reported as failed)."""
    merged: dict[str, Any] = {}
    for step in ("first_backup", "no_change_backup"):
        figures = [r.get(step) for r in rounds]
        if any(not isinstance(f, dict) or "failed" in f for f in figures):
            merged[step] = next(
                (f for f in figures if isinstance(f, dict) and "failed" in f), {"failed": "missing"}
            )
            continue
        ordered = sorted(figures, key=lambda f: f["seconds"])
        merged[step] = {**ordered[(len(ordered) - 1) // 2], "runs": [f["seconds"] for f in figures]}
        merged[step]["peak_rss_bytes"] = max(f["peak_rss_bytes"] for f in figures)
    return merged


# --- report -------------------------------------------------------------------------------------


FAILED = "FAILED"


def _value(results: dict[str, Any], tool: str, step: str, key: str) -> Any:
    """A figure, FAILED when its step failed, None when it was not measured."""
    figures = results["tools"].get(tool, {}).get(step)
    if not isinstance(figures, dict):
        return None
    return FAILED if "failed" in figures else figures.get(key)


def _peak_rss(results: dict[str, Any], tool: str) -> int | None:
    return peak_rss(results["tools"].get(tool, {}))


def _finished(results: dict[str, Any], tool: str) -> bool:
    """The tool ran every step of the mode without a failure."""
    steps = results["tools"].get(tool)
    return bool(steps) and "error" not in steps and not any("failed" in v for v in steps.values())


def evaluate_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: Capsule's figure, the bound, PASS / FAIL (n/a when a figure is missing)."""

    def number(tool: str, step: str, key: str = "seconds") -> float | None:
        value = _value(results, tool, step, key)
        return value if isinstance(value, int | float) else None

    def check(value: float | None, bound: float | None, unit: str = "s") -> dict[str, Any]:
        verdict = "n/a" if value is None or bound is None else ("PASS" if value <= bound else "FAIL")
        return {"value": value, "threshold": bound, "unit": unit, "verdict": verdict}

    if results["settings"]["mode"] == "scale":
        rss = _peak_rss(results, "capsule") if _finished(results, "capsule") else None
        no_change = number("capsule", "no_change_backup")
        return {
            "first_backup_le_restic": check(
                number("capsule", "first_backup"), number("restic", "first_backup")
            ),
            "no_change_le_2s": check(no_change, TARGET_NO_CHANGE_SECONDS),
            "no_change_le_restic": check(no_change, number("restic", "no_change_backup")),
            "peak_rss_le_300mb": check(rss, TARGET_RSS_BYTES, "MB"),
        }
    return {
        "first_backup_le_restic": check(number("capsule", "first_backup"), number("restic", "first_backup")),
        "no_change_le_restic": check(
            number("capsule", "no_change_backup"), number("restic", "no_change_backup")
        ),
        "changed_le_restic": check(number("capsule", "changed_backup"), number("restic", "changed_backup")),
        "restore_all_le_restic": check(number("capsule", "restore_all"), number("restic", "restore_all")),
        "restore_one_le_restic": check(number("capsule", "restore_one"), number("restic", "restore_one")),
        "cat_one_le_restic": check(number("capsule", "cat_one"), number("restic", "cat_one")),
    }


# (label, step, key, unit, target). Units: "s" and "MB" (".3": three decimals) are
# lower-is-better, "MB/s" higher-is-better; "" is a plain value. Targets: keys, space-separated.
Row = tuple[str, str, str, str, str]
FILES_ROWS: list[Row] = [
    ("init: time", "init", "seconds", "s", ""),
    ("first backup: time", "first_backup", "seconds", "s", "first_backup_le_restic"),
    ("first backup: throughput", "first_backup", "mb_per_s", "MB/s", ""),
    ("first backup: peak RSS", "first_backup", "peak_rss_bytes", "MB", ""),
    ("first backup: repository size", "first_backup", "repository_bytes_after", "MB", ""),
    ("no-change backup: time", "no_change_backup", "seconds", "s", "no_change_le_restic"),
    ("no-change backup: peak RSS", "no_change_backup", "peak_rss_bytes", "MB", ""),
    ("no-change backup: repository growth", "no_change_backup", "repository_growth_bytes", "MB.3", ""),
    ("1% changed backup: time", "changed_backup", "seconds", "s", "changed_le_restic"),
    ("1% changed backup: peak RSS", "changed_backup", "peak_rss_bytes", "MB", ""),
    ("1% changed backup: repository growth", "changed_backup", "repository_growth_bytes", "MB.3", ""),
    ("1% changed backup: repository size", "changed_backup", "repository_bytes_after", "MB", ""),
    ("restore everything: time", "restore_all", "seconds", "s", "restore_all_le_restic"),
    ("restore everything: throughput", "restore_all", "mb_per_s", "MB/s", ""),
    ("restore everything: peak RSS", "restore_all", "peak_rss_bytes", "MB", ""),
    ("restore everything: verified", "restore_all", "verified", "", ""),
    ("one file, restore filter: time (median)", "restore_one", "seconds", "s", "restore_one_le_restic"),
    ("one file, restore filter: CPU time (median)", "restore_one", "cpu_seconds", "s", ""),
    ("one file, restore filter: peak RSS", "restore_one", "peak_rss_bytes", "MB", ""),
    ("one file, to stdout: time (median)", "cat_one", "seconds", "s", "cat_one_le_restic"),
    ("one file, to stdout: CPU time (median)", "cat_one", "cpu_seconds", "s", ""),
    ("one file, to stdout: peak RSS", "cat_one", "peak_rss_bytes", "MB", ""),
]
SCALE_ROWS: list[Row] = [
    ("init: time", "init", "seconds", "s", ""),
    ("first backup: time", "first_backup", "seconds", "s", "first_backup_le_restic"),
    ("first backup: peak RSS", "first_backup", "peak_rss_bytes", "MB", ""),
    ("first backup: repository size", "first_backup", "repository_bytes_after", "MB", ""),
    ("no-change backup: time", "no_change_backup", "seconds", "s", "no_change_le_2s no_change_le_restic"),
    ("no-change backup: peak RSS", "no_change_backup", "peak_rss_bytes", "MB", ""),
    ("no-change backup: repository growth", "no_change_backup", "repository_growth_bytes", "MB.3", ""),
]


def _cell(value: Any, unit: str) -> str:
    if value == FAILED:
        return FAILED
    if unit == "MB":
        return fmt_mb(value)
    if unit == "MB.3":
        return "-" if value is None else f"{value / MB:.3f} MB"
    if unit == "" and isinstance(value, bool):
        return "yes" if value else "no"
    return fmt(value, f" {unit}" if unit else "")


def _ratio(capsule: Any, other: Any, unit: str) -> str:
    """>1 when Capsule is better: faster, smaller or leaner."""
    numbers = [v for v in (capsule, other) if isinstance(v, int | float) and not isinstance(v, bool)]
    if unit not in {"s", "MB", "MB.3", "MB/s"} or len(numbers) < 2 or not all(numbers):
        return "-"
    return f"x{(capsule / other) if unit == 'MB/s' else (other / capsule):.2f}"


def render_report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    tools = [name for name in TOOL_NAMES if name in results["tools"]]
    lines = [
        f"tree: {settings['files']} files ({settings['compressible_files']} compressible),"
        f" {settings['tree_bytes'] / MB:.1f} MB in {settings['folders']} folders,"
        f" generated in {settings['generate_seconds']} s",
        f"page cache: {settings['page_cache']}; {settings['cpu_count']} CPUs",
    ]
    lines += [f"{name}: {settings[f'{name}_version']}" for name in tools if f"{name}_version" in settings]
    if probe := settings.get("probe_file"):
        lines.append(f"one-file restores: {probe['path']} ({probe['bytes'] / MB:.2f} MB)")
    if mutation := results.get("mutation"):
        lines.append(
            f"change: {mutation['files_changed']} of {mutation['files_total']} files ({mutation['appended']}"
            f" appended to), {mutation['bytes_written'] / MB:.2f} MB written into files of"
            f" {mutation['changed_file_bytes'] / MB:.1f} MB"
        )
    others = [name for name in tools if name != "capsule"]
    header = ["", *tools, *(f"vs {name}" for name in others if "capsule" in tools), "target"]
    table = [header]
    rows = SCALE_ROWS if settings["mode"] == "scale" else FILES_ROWS
    targets = results["targets"]
    for label, step, key, unit, target in rows:
        values = {name: _value(results, name, step, key) for name in tools}
        ratios = [_ratio(values["capsule"], values[n], unit) for n in others] if "capsule" in tools else []
        verdict = ", ".join(targets[key]["verdict"] for key in target.split())
        table.append([label, *(_cell(values[n], unit) for n in tools), *ratios, verdict])
    rss = {name: _peak_rss(results, name) for name in tools}
    rss_target = targets["peak_rss_le_300mb"]["verdict"] if "peak_rss_le_300mb" in targets else ""
    ratios = [_ratio(rss["capsule"], rss[n], "MB") for n in others] if "capsule" in tools else []
    table.append(["peak RSS, any command", *(fmt_mb(rss[n]) for n in tools), *ratios, rss_target])
    lines += ["", *align_columns(table), ""]
    if others and "capsule" in tools:
        lines.append("vs <tool>: >1 means Capsule is better (faster, smaller, leaner).")
    for name, verdict in targets.items():
        lines.append(
            f"target {name}: {verdict['verdict']} (Capsule {_cell(verdict['value'], verdict['unit'])},"
            f" bound {_cell(verdict['threshold'], verdict['unit'])})"
        )
    for name in tools:
        figures = results["tools"][name]
        if "error" in figures:
            lines.append(f"{name} did not finish: {figures['error']}")
        lines += [
            f"{name} {step} failed: {v['failed']}"
            for step, v in figures.items()
            if isinstance(v, dict) and "failed" in v
        ]
        warned = [
            f"{step}: {v['warnings']}"
            for step, v in figures.items()
            if isinstance(v, dict) and v.get("warnings")
        ]
        if warned:
            lines.append(f"{name} warnings: {', '.join(warned)}")
        lines += [
            f"{name} {step}, each round (the table has the median): "
            + ", ".join(f"{t:.2f} s" for t in v["runs"])
            for step, v in figures.items()
            if isinstance(v, dict) and "runs" in v
        ]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


COMMANDS = ("run", "scale", "generate", "mutate")


def _bench_options(default_files: int, default_tools: str) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--files", type=int, default=default_files, help=f"default {default_files}")
    options.add_argument("--smoke", action="store_true", help="a small tree: a check that everything runs")
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--tools", default=default_tools, help=f"a subset of {','.join(TOOL_NAMES)}")
    options.add_argument("--workdir", type=Path, default=None, help="where to make the scratch directory")
    options.add_argument("--keep", action="store_true", help="keep the scratch directory")
    options.add_argument("--json-out", type=Path, default=None, help="write every figure as JSON")
    options.add_argument("--warm", action="store_true", help="do not drop the page cache between steps")
    options.add_argument(
        "--one-file-runs",
        type=int,
        default=3,
        help="rounds of the one-file restore and cat, the tools taking turns (medians; default 3)",
    )
    options.add_argument(
        "--runs", type=int, default=1, help="scale: rounds, the tools taking turns; medians are reported"
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_files",
        description="Back up a generated folder of product images with Capsule, restic and borg, change "
        "1%% of it, back up again and restore; print the figures side by side. Without a command: run.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,scale,generate,mutate}")
    sub.add_parser(
        "run",
        parents=[_bench_options(DEFAULT_FILES, ",".join(TOOL_NAMES))],
        help="the default: image-like files of 5 KB to 5 MB, every step",
    )
    sub.add_parser(
        "scale",
        parents=[_bench_options(SCALE_FILES, "capsule,restic")],
        help="many small files: first and no-change backup, memory",
    )
    generate = sub.add_parser("generate", help="only write a tree")
    generate.add_argument("dir", type=Path)
    generate.add_argument("--files", type=int, default=DEFAULT_FILES)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--total", type=parse_size, default=None, help="scale the sizes to about this total"
    )
    generate.add_argument("--small", action="store_true", help="the scale mode's 1 to 20 KB files")
    generate.add_argument("--if-missing", action="store_true", help="do nothing if DIR already exists")
    mutate = sub.add_parser("mutate", help="change a fraction of a tree's files")
    mutate.add_argument("dir", type=Path)
    mutate.add_argument("--fraction", type=float, default=MUTATE_FRACTION)
    mutate.add_argument("--seed", type=int, default=0)
    return parser


def _benchmark(args: argparse.Namespace) -> int:
    wanted = [name.strip() for name in args.tools.split(",") if name.strip()]
    if unknown := set(wanted) - set(TOOL_NAMES):
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    files = args.files
    if args.smoke:
        files = SMOKE_SCALE_FILES if args.command == "scale" else SMOKE_FILES
    run = run_scale if args.command == "scale" else run_files
    with scratch_directory(args.workdir, "capsule-bench-files-", keep=args.keep) as scratch:
        results = run(
            Options(
                files,
                args.seed,
                scratch,
                wanted,
                args.warm,
                one_file_runs=max(1, args.one_file_runs),
                runs=max(1, args.runs),
            )
        )
    print(render_report(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str))
    # Missed targets are figures to read; a tool that failed a step (or is missing) is an error.
    return 0 if all(_finished(results, name) for name in wanted) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in {*COMMANDS, "-h", "--help"}:
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        if args.if_missing and args.dir.exists():
            print(f"{args.dir} exists; left as it is")
            return 0
        tree = generate_tree(
            args.dir, args.files, args.seed, args.total, sizes=SMALL_SIZES if args.small else IMAGE_SIZES
        )
        print(
            f"{args.dir}: {len(tree.files)} files, {tree.total_bytes / MB:.1f} MB in {tree.folders} folders"
            f" ({tree.text_files} compressible), {tree.seconds:.1f} s"
        )
        return 0
    if args.command == "mutate":
        mutation = mutate_tree(args.dir, args.fraction, args.seed)
        print(json.dumps(mutation.figures(len(list_files(args.dir)))))
        return 0
    return _benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
