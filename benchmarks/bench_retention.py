"""Retention benchmark: forget and prune a month of hourly database backups, Capsule against restic.

    python -m benchmarks.bench_retention history --workdir DIR [--db-mib 256] [--hours 720]
                                                 [--change-percent 1] [--seed 0]
    python -m benchmarks.bench_retention prune --workdir DIR [--runs 3] [--tools capsule,restic]
                                               [--json] [--json-out FILE]

`history` builds a point-of-sale database, then for every simulated hour changes about
`--change-percent` of its pages (the same changes for any run with the same seed) and backs it up
with both tools, each snapshot dated at that hour: Capsule through its backup job, run in this
process with a simulated clock; restic from a copy made with SQLite's backup API, with
`restic backup --time`. Both repositories stay in DIR; a second run picks up where the first
stopped (and can extend it with a larger `--hours`).

`prune` copies both repositories afresh for every run (not timed), then times, the tools taking
turns, Capsule's `capsule forget --prune` and restic's `forget --prune`, with
the same policy (`POLICY`) and the same time zone (UTC). It reports the repository's size before
and after, the wall time, the processor time and the peak RSS, medians over the runs. See
benchmarks/README.md.
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.bench_database import consistent_copy
from benchmarks.common import (
    MB,
    CommandFailedError,
    CommandResult,
    align_columns,
    capsule_command,
    capsule_env,
    directory_bytes,
    last_json_object,
    log,
    restic_env,
    run_measured,
)
from benchmarks.common import fmt_mb as _mb
from benchmarks.posdb import generate, mutate_pages

MiB = 1024 * 1024
DB_NAME = "pos.db"
HOST = "pos"
START = datetime(2026, 1, 1, tzinfo=UTC)
"""The first simulated hour; a history runs on from there, one backup an hour."""

POLICY: dict[str, int] = {"hourly": 48, "daily": 14, "weekly": 8, "monthly": 12, "yearly": 3}
"""The retention policy both tools apply: one snapshot per period, for this many periods."""

TARGET_SPEED_RATIO = 3.0
TARGET_RSS_BYTES = 300 * MB
SPARE_BYTES = 2 * 1000 * MB
"""Free space a fresh copy leaves, for what forget and prune write before they delete."""
SAMPLE_SECONDS = 0.05
STATE_FILE = "history.json"
PARAMETERS = ("db_mib", "seed", "change_percent", "tools")
"""What a history cannot change once begun (`hours` can grow)."""
TOOLS = ["capsule", "restic"]


# --- the pure parts ---------------------------------------------------------------------------


def restic_policy_args(policy: dict[str, int] = POLICY) -> list[str]:
    """`restic forget` options for ``policy``."""
    args: list[str] = []
    for period, count in policy.items():
        args += [f"--keep-{period}", str(count)]
    return args


def capsule_policy_settings(policy: dict[str, int] = POLICY) -> list[tuple[str, str]]:
    """`capsule settings set` keys and values for ``policy``, in the shop's time zone set to UTC.

    `keep_last` is 0: restic is given no `--keep-last`, and Capsule's own default keeps a few.
    """
    settings = [("timezone", "UTC"), ("retention.database.keep_last", "0")]
    return settings + [(f"retention.database.keep_{period}", str(count)) for period, count in policy.items()]


def hour_time(hour: int) -> datetime:
    return START + timedelta(hours=hour)


def restic_time(moment: datetime) -> str:
    """restic's `--time` format, in UTC (restic reads it in the TZ it runs in: UTC here)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def hour_seed(seed: int, hour: int) -> int:
    """The seed of one hour's changes: the same for every run of a history, different each hour."""
    return seed * 1_000_003 + hour


def change_pages(database: Path, *, seed: int, hour: int, percent: float) -> int:
    """Change about ``percent`` of the database's pages, the same way for the same seed and hour."""
    return mutate_pages(database, fraction=percent / 100, seed=hour_seed(seed, hour))


# --- the history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a history and the prune runs keep their files under the work directory."""

    workdir: Path

    @property
    def history(self) -> Path:
        return self.workdir / "history"

    @property
    def database(self) -> Path:
        return self.history / DB_NAME

    @property
    def restic_source(self) -> Path:
        return self.history / "restic-source" / DB_NAME

    @property
    def state(self) -> Path:
        return self.history / STATE_FILE

    def capsule_repository(self, base: Path) -> Path:
        return base / "capsule-repo"

    def capsule_home(self, base: Path) -> Path:
        return base / "capsule-home"

    def restic_repository(self, base: Path) -> Path:
        return base / "restic-repo"

    def restic_cache(self, base: Path) -> Path:
        return base / "restic-cache"

    def capsule_environment(self, command: list[str], base: Path) -> dict[str, str]:
        return capsule_env(
            command,
            {
                "CAPSULE_DATABASE": str(self.database),
                "CAPSULE_REPOSITORY": str(self.capsule_repository(base)),
                "CAPSULE_HOME": str(self.capsule_home(base)),
                "CAPSULE_NICE": "0",
                "TZ": "UTC",
            },
            drop=("CAPSULE_PASSPHRASE", "CAPSULE_KEY_FILE", "CAPSULE_EVENT_STORE_URL", "CAPSULE_BROKER_URL"),
        )

    def restic_environment(self, base: Path) -> dict[str, str]:
        env = restic_env(self.restic_repository(base), base)
        env["TZ"] = "UTC"
        return env


class InProcessCapsule:
    """Capsule's backup, run in this process with the snapshot's time given, and its settings.

    The backup job takes its snapshot's time from the wall clock when it copies the database (not
    from the runtime's clock), so the history calls the use case that runs the repository engine
    alone with a `now`, as the tests that order snapshots do: the same copy, store and commit,
    without the job's events (forget finds the snapshots in the repository, not in those events).
    """

    def __init__(self, layout: Layout) -> None:
        import logging

        import structlog

        from capsule.orchestrator.settings import Settings

        # One line an hour from the benchmark, not the engine's own lines.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        self.settings = Settings(
            database=layout.database,
            repository=layout.capsule_repository(layout.history),
            home=layout.capsule_home(layout.history),
            passphrase=None,
            key_file=None,
            event_store_url=None,
            broker_url=None,
        )

    def set(self, key: str, value: str) -> None:
        """What `capsule settings set KEY VALUE` does, without a process for each setting."""
        from capsule.orchestrator.usecases.settings import ChangeSetting, change

        change(self.settings, ChangeSetting(key=key, value=value))

    def backup(self, moment: datetime) -> dict[str, Any]:
        """Back up the database as a snapshot taken at ``moment``; its id and time."""
        from capsule.orchestrator.usecases.backup import back_up_database_in_process

        result = back_up_database_in_process(self.settings, now=moment)
        return {"snapshot_id": result.snapshot_id, "time": result.manifest.time.isoformat()}


def _load_state(layout: Layout, parameters: dict[str, Any]) -> dict[str, Any]:
    if not layout.state.exists():
        return {**parameters, "hours_done": []}
    state: dict[str, Any] = json.loads(layout.state.read_text())
    state.setdefault("tools", TOOLS)  # histories begun before `--tools` were made with both
    different = [k for k in PARAMETERS if state.get(k) != parameters[k]]
    if different:
        made = ", ".join(f"--{k.replace('_', '-')} {_option(state.get(k))}" for k in different)
        raise SystemExit(
            f"{layout.history} holds a history made with {made}: give the same options to go on with it, "
            "or another --workdir for a new one"
        )
    return state


def _save_state(layout: Layout, state: dict[str, Any]) -> None:
    scratch = layout.state.with_suffix(".tmp")
    scratch.write_text(json.dumps(state, indent=1))
    scratch.replace(layout.state)


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if done.returncode != 0:
        raise CommandFailedError(
            f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr.strip()[-2000:]}"
        )
    return done


def _restic_newest(restic: str, env: dict[str, str]) -> datetime | None:
    snapshots = json.loads(_run([restic, "snapshots", "--json", "--host", HOST], env).stdout or "[]")
    times = [datetime.fromisoformat(s["time"]) for s in snapshots]
    return max(times) if times else None


def _capsule_newest(command: list[str], env: dict[str, str]) -> datetime | None:
    snapshots = json.loads(_run([*command, "snapshots", "--json"], env).stdout or "[]")
    times = [datetime.fromisoformat(s["time"]) for s in snapshots if s.get("kind") == "database"]
    return max(times) if times else None


def _within(moment: datetime | None, hour: int) -> bool:
    return moment is not None and hour_time(hour) <= moment < hour_time(hour + 1)


def _option(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def build_history(
    workdir: Path,
    *,
    db_mib: int,
    hours: int,
    change_percent: float,
    seed: int,
    restic: str,
    tools: list[str] = TOOLS,
    min_free_bytes: int = 0,
) -> dict[str, Any]:
    """Make (or go on with) a history of ``hours`` hourly backups with ``tools``; its state.

    Capsule alone (`--tools capsule`) is how a large database's history is made for its memory
    target, where restic's repository would grow by a fifth of the database every hour.
    """
    command = capsule_command()
    if command is None:
        raise SystemExit("the `capsule` command is not installed: pip install -e . first")
    layout = Layout(workdir)
    layout.history.mkdir(parents=True, exist_ok=True)
    parameters = {"db_mib": db_mib, "seed": seed, "change_percent": change_percent, "tools": tools}
    state = _load_state(layout, parameters)
    capsule_env_ = layout.capsule_environment(command, layout.history)
    restic_env_ = layout.restic_environment(layout.history)

    if not layout.database.exists() or "generated_seconds" not in state:
        log(f"generating a {db_mib} MiB database")
        started = time.perf_counter()
        generate(layout.database, db_mib * MiB, seed=seed)
        state["generated_seconds"] = round(time.perf_counter() - started, 1)
        state["database_bytes"] = layout.database.stat().st_size
        _save_state(layout, state)
    if not layout.capsule_repository(layout.history).exists():
        _run([*command, "init"], capsule_env_)
    if "restic" in tools and not layout.restic_repository(layout.history).exists():
        _run([restic, "init"], restic_env_)
    capsule = InProcessCapsule(layout)
    for key, value in capsule_policy_settings():
        capsule.set(key, value)

    done: list[dict[str, Any]] = state["hours_done"]
    next_hour = len(done)
    # An hour that was under way when a run stopped: its changes were made; a tool may have backed it up.
    pending = state.get("pending")
    capsule_newest = _capsule_newest(command, capsule_env_) if pending else None
    restic_newest = _restic_newest(restic, restic_env_) if pending and "restic" in tools else None

    for hour in range(next_hour, hours):
        if (free := shutil.disk_usage(layout.history).free) < min_free_bytes:
            raise SystemExit(
                f"stopped before hour {hour + 1}: {layout.history} has {free / MB:,.0f} MB free, less than "
                f"--min-free-gb {min_free_bytes / (1000 * MB):g}; free some space and run again to go on"
            )
        record: dict[str, Any] = dict(pending) if pending and pending["hour"] == hour else {"hour": hour}
        pending = None
        if hour > 0 and "changed_pages" not in record:
            started = time.perf_counter()
            record["changed_pages"] = change_pages(
                layout.database, seed=seed, hour=hour, percent=change_percent
            )
            record["change_seconds"] = round(time.perf_counter() - started, 2)
            state["pending"] = record
            _save_state(layout, state)
        if "capsule_seconds" not in record:
            if _within(capsule_newest, hour):
                record["capsule_seconds"], record["time"] = None, capsule_newest.isoformat()  # type: ignore[union-attr]
            else:
                started = time.perf_counter()
                result = capsule.backup(hour_time(hour))
                record["capsule_seconds"] = round(time.perf_counter() - started, 2)
                record["time"] = result["time"]
                record["capsule_snapshot"] = result["snapshot_id"]
            state["pending"] = record
            _save_state(layout, state)
        if "restic_seconds" not in record:
            if "restic" in tools and not _within(restic_newest, hour):
                started = time.perf_counter()
                layout.restic_source.parent.mkdir(exist_ok=True)
                consistent_copy(layout.database, layout.restic_source)
                record["restic_copy_seconds"] = round(time.perf_counter() - started, 2)
                moment = restic_time(hour_time(hour))
                started = time.perf_counter()
                _run(
                    [restic, "backup", "--json", "--host", HOST, "--time", moment, str(layout.restic_source)],
                    restic_env_,
                )
                record["restic_seconds"] = round(time.perf_counter() - started, 2)
            else:
                record["restic_seconds"] = None
        done.append(record)
        state.pop("pending", None)
        state["hours"] = len(done)
        _save_state(layout, state)
        log(
            f"hour {hour + 1}/{hours} {hour_time(hour):%Y-%m-%d %H:%M}: "
            f"{record.get('changed_pages', 0)} pages changed ({record.get('change_seconds', 0)} s), "
            f"capsule {record['capsule_seconds']} s"
            + (
                f", restic {record['restic_seconds']} s (+ copy {record.get('restic_copy_seconds')} s)"
                if "restic" in tools
                else ""
            )
        )
    return state


def history_summary(state: dict[str, Any], layout: Layout | None = None) -> dict[str, Any]:
    """Median seconds per hour for each part of a history's hours, and what they add up to; with
    ``layout``, what each tool's repository holds now."""
    hours = state["hours_done"][1:] or state["hours_done"]  # the first backup stores everything

    def median(key: str) -> float | None:
        values = [h[key] for h in hours if h.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    parts = {
        k: median(k) for k in ("change_seconds", "capsule_seconds", "restic_copy_seconds", "restic_seconds")
    }
    per_hour = sum(v for v in parts.values() if v is not None)
    summary = {
        "hours": len(state["hours_done"]),
        "db_mib": state["db_mib"],
        "median_seconds": parts,
        "seconds_per_hour": round(per_hour, 2),
        "changed_pages_median": median("changed_pages"),
    }
    if layout is not None:
        repositories = {"capsule": layout.capsule_repository, "restic": layout.restic_repository}
        summary["repository_bytes"] = {
            tool: directory_bytes(where(layout.history))
            for tool, where in repositories.items()
            if where(layout.history).exists()
        }
    return summary


# --- prune ------------------------------------------------------------------------------------


def require_capsule_commands(command: list[str], names: tuple[str, ...] = ("forget", "prune")) -> None:
    """SystemExit naming the `capsule` commands this benchmark needs and this Capsule lacks."""
    missing = []
    for name in names:
        probe = subprocess.run(
            [*command, name, "--help"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if probe.returncode != 0:
            missing.append(name)
    if missing:
        listed = " and ".join(f"`capsule {n}`" for n in missing)
        raise SystemExit(
            f"this Capsule has no {listed}: the prune phase runs `capsule forget --prune --json`; "
            "install a Capsule that has them, or measure restic alone "
            "with --tools restic"
        )


def _fresh_copy(source: Path, destination: Path, *, link: bool = False) -> None:
    """Replace ``destination`` with a copy of ``source`` (with ``link``, hard links to its files);
    SystemExit first if the disk cannot hold the copy."""
    shutil.rmtree(destination, ignore_errors=True)
    if not source.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    needed, free = 0 if link else directory_bytes(source), shutil.disk_usage(destination.parent).free
    if needed + SPARE_BYTES > free:
        raise SystemExit(
            f"copying {source} needs {needed / MB:,.0f} MB and {destination.parent} has "
            f"{free / MB:,.0f} MB free (keeping {SPARE_BYTES / MB:,.0f} MB spare): free some space, "
            "give a --workdir on a larger disk, or use --link"
        )
    subprocess.run(["cp", "-al" if link else "-a", str(source), str(destination)], check=True)


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root``, by relative path."""
    states = {}
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                stat = path.stat()
                states[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return states


@contextlib.contextmanager
def fresh_copies(
    history: Path,
    base: Path,
    repository: Callable[[Path], Path],
    local: Callable[[Path], Path],
    *,
    link: bool,
) -> Iterator[None]:
    """Fresh copies of a tool's repository and its local state (a home, a cache) under ``base`` for
    one run, removed after it.

    With ``link`` the repository's files are hard links to the history's: a tool that wrote into a
    file instead of replacing it would change the history too, so they are checked after the run.
    The local state, small and written in place (Capsule's event log is a SQLite database), is
    always copied.
    """
    before = file_states(repository(history)) if link else {}
    _fresh_copy(repository(history), repository(base), link=link)
    _fresh_copy(local(history), local(base))
    try:
        yield
    finally:
        shutil.rmtree(base, ignore_errors=True)
    changed = [name for name, now in file_states(repository(history)).items() if before.get(name, now) != now]
    if changed:
        raise SystemExit(
            f"files of a hard-linked copy were written in place ({', '.join(changed[:3])}): the history "
            f"in {repository(history)} is no longer the one measured; make it again and run without --link"
        )


def _json_or_text(text: str) -> Any:
    try:
        return last_json_object(text)
    except ValueError:
        return text.strip()[-2000:]


@dataclass
class Sampled:
    result: CommandResult
    tree_peak_rss_bytes: int
    """The highest sum of resident memory over the command and all its descendants, sampled."""


def run_sampled(argv: list[str], env: dict[str, str]) -> Sampled:
    """`run_measured` (exact wall time, the largest single process's peak RSS from wait4), with the
    whole process tree's resident memory summed every `SAMPLE_SECONDS` meanwhile: a command whose
    work is spread over child processes is judged by what they hold together."""
    import psutil  # type: ignore[import-untyped,unused-ignore]  # a dev dependency, as for serve_idle

    peak = 0
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(SAMPLE_SECONDS):
            total = 0
            # The launcher is this process's child; the command and its children are below it.
            for launcher in me.children():
                with contextlib.suppress(psutil.Error):  # the launcher may end while it is listed
                    for proc in launcher.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            total += proc.memory_info().rss
            peak = max(peak, total)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        result = run_measured(argv, env)
    finally:
        stop.set()
        sampler.join()
    return Sampled(result, max(peak, result.peak_rss_bytes))


def _measured(runs: list[Sampled]) -> dict[str, Any]:
    return {
        "seconds": round(sum(r.result.seconds for r in runs), 3),
        "cpu_seconds": round(sum(r.result.cpu_seconds for r in runs), 3),
        "peak_rss_bytes": max(r.tree_peak_rss_bytes for r in runs),
        "largest_process_peak_rss_bytes": max(r.result.peak_rss_bytes for r in runs),
        "commands": [{"argv": r.result.argv[-3:], "seconds": round(r.result.seconds, 3)} for r in runs],
    }


def snapshot_times(listing: str) -> list[str]:
    """The times, in UTC to the second and in order, of a `snapshots --json` listing (either tool's)."""
    times = [datetime.fromisoformat(s["time"]).astimezone(UTC) for s in json.loads(listing or "[]")]
    return [t.strftime("%Y-%m-%d %H:%M:%S") for t in sorted(times)]


def prune_capsule(
    layout: Layout, command: list[str], base: Path, repack_unused_percent: int | None = None
) -> dict[str, Any]:
    """Forget then prune the copy of the history's Capsule repository under ``base``; the figures.
    ``repack_unused_percent`` replaces Capsule's threshold for repacking a partly used pack."""
    env = layout.capsule_environment(command, base)
    settings = capsule_policy_settings()  # the history set them already; a copy says so again
    if repack_unused_percent is not None:
        settings.append(("retention.repack-unused-percent", str(repack_unused_percent)))
    for key, value in settings:
        _run([*command, "settings", "set", key, value], env)
    before = directory_bytes(layout.capsule_repository(base))
    snapshots_before = len(json.loads(_run([*command, "snapshots", "--json"], env).stdout or "[]"))
    # One command, as restic's `forget --prune` is: `capsule forget --prune` forgets, then runs the
    # prune job, in one process.
    both = run_sampled([*command, "forget", "--prune", "--json"], env)
    after = directory_bytes(layout.capsule_repository(base))
    kept = snapshot_times(_run([*command, "snapshots", "--json"], env).stdout)
    return {
        "bytes_before": before,
        "bytes_after": after,
        "snapshots_before": snapshots_before,
        "snapshots_after": len(kept),
        "kept": kept,
        **_measured([both]),
        "reports": [_json_or_text(both.result.stdout)],
    }


def prune_restic(layout: Layout, restic: str, base: Path) -> dict[str, Any]:
    """`restic forget --prune` with the same policy on the copy of the history's repository under ``base``."""
    env = layout.restic_environment(base)
    before = directory_bytes(layout.restic_repository(base))
    snapshots_before = len(json.loads(_run([restic, "snapshots", "--json"], env).stdout or "[]"))
    result = run_sampled([restic, "forget", "--prune", *restic_policy_args(), "--host", HOST], env)
    after = directory_bytes(layout.restic_repository(base))
    kept = snapshot_times(_run([restic, "snapshots", "--json"], env).stdout)
    return {
        "bytes_before": before,
        "bytes_after": after,
        "snapshots_before": snapshots_before,
        "snapshots_after": len(kept),
        "kept": kept,
        **_measured([result]),
    }


PACK_AGE = 3 * 3600
"""How old Capsule's packs are dated before its prune (seconds): past the two hours in which a prune
leaves a pack alone because a running backup may still adopt it."""


def date_packs(repository: Path, age: float = PACK_AGE) -> int:
    """Date every pack of ``repository`` at least ``age`` seconds back; return how many were moved.

    The history's backups were made seconds apart on the wall clock but an hour apart on the simulated
    one, and a prune judges a pack's age by its file's time. Dating them as the simulated clock would
    have left them is what a month of real hourly backups gives a prune to work with. It changes no
    byte, and doing it again changes nothing."""
    when = time.time() - age
    moved = 0
    for pack in (repository / "data").rglob("*"):
        if pack.is_file() and not pack.name.startswith(".") and pack.stat().st_mtime > when:
            os.utime(pack, (when, when))
            moved += 1
    return moved


def run_prune(
    workdir: Path,
    *,
    runs: int,
    tools: list[str],
    restic: str,
    link: bool = False,
    repack_unused_percent: int | None = None,
) -> dict[str, Any]:
    layout = Layout(workdir)
    if not layout.state.exists():
        raise SystemExit(f"{workdir} holds no history: run `history --workdir {workdir}` first")
    state = json.loads(layout.state.read_text())
    absent = [tool for tool in tools if tool not in state.get("tools", TOOLS)]
    if absent:
        raise SystemExit(
            f"the history in {workdir} was made without {' and '.join(absent)}: "
            f"give --tools {','.join(state['tools'])}"
        )
    command = capsule_command() if "capsule" in tools else None
    if "capsule" in tools:
        if command is None:
            raise SystemExit("the `capsule` command is not installed: pip install -e . first")
        require_capsule_commands(command)
    actions: dict[str, Callable[[Path], dict[str, Any]]] = {
        "capsule": lambda base: prune_capsule(layout, command or [], base, repack_unused_percent),
        "restic": lambda base: prune_restic(layout, restic, base),
    }
    parts = {
        "capsule": (layout.capsule_repository, layout.capsule_home),
        "restic": (layout.restic_repository, layout.restic_cache),
    }
    if "capsule" in tools:
        date_packs(layout.capsule_repository(layout.history))
    figures: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    for run in range(runs):
        order = tools if run % 2 == 0 else list(reversed(tools))  # each tool goes first in turn
        for tool in order:
            base = workdir / "prune" / tool
            log(f"run {run + 1}/{runs}: {tool} forget and prune")
            with fresh_copies(layout.history, base, *parts[tool], link=link):
                figures[tool].append(actions[tool](base))
            f = figures[tool][-1]
            log(
                f"  {tool}: {f['seconds']:.2f} s, {_mb(f['bytes_before'])} -> {_mb(f['bytes_after'])}, "
                f"{f['snapshots_before']} -> {f['snapshots_after']} snapshots, RSS {_mb(f['peak_rss_bytes'])}"
            )
    return {
        "history": history_summary(state),
        "policy": POLICY,
        "runs": figures,
        "medians": {tool: medians(runs_) for tool, runs_ in figures.items()},
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "bytes_before",
        "bytes_after",
        "snapshots_before",
        "snapshots_after",
        "seconds",
        "cpu_seconds",
        "peak_rss_bytes",
        "largest_process_peak_rss_bytes",
    )
    return {k: statistics.median(r[k] for r in runs) for k in keys if all(k in r for r in runs)}


def ratio(restic: float | None, capsule: float | None) -> float | None:
    """restic's figure over Capsule's: above 1, Capsule is faster, smaller or leaner."""
    if not restic or not capsule:
        return None
    return restic / capsule


def report_lines(report: dict[str, Any]) -> list[str]:
    m = report["medians"]
    c, r = m.get("capsule", {}), m.get("restic", {})
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("repository before", "bytes_before", _mb),
        ("repository after", "bytes_after", _mb),
        ("snapshots before", "snapshots_before", lambda v: "-" if v is None else f"{v:g}"),
        ("snapshots after", "snapshots_after", lambda v: "-" if v is None else f"{v:g}"),
        ("forget + prune time", "seconds", lambda v: "-" if v is None else f"{v:.2f} s"),
        # Processor time (user and system, the command and its children): a loaded machine
        # stretches the wall time of whichever tool it slows, this much less.
        ("forget + prune CPU", "cpu_seconds", lambda v: "-" if v is None else f"{v:.2f} s"),
        ("peak RSS", "peak_rss_bytes", _mb),
    ]
    table = [["", "Capsule", "restic", "Capsule advantage"]]
    for label, key, show in rows:
        advantage = (
            ratio(r.get(key), c.get(key)) if key not in ("snapshots_before", "snapshots_after") else None
        )
        table.append(
            [label, show(c.get(key)), show(r.get(key)), "-" if advantage is None else f"{advantage:.2f}x"]
        )
    h = report["history"]
    lines = [
        f"{h['hours']} hourly backups of a {h['db_mib']} MiB database; policy "
        + ", ".join(f"{n} {p}" for p, n in report["policy"].items())
        + f"; medians of {len(next(iter(report['runs'].values()), []))} runs",
        *align_columns(table),
    ]
    if c and r:
        speed = ratio(r["seconds"], c["seconds"])
        targets = [
            (
                f"prune at least {TARGET_SPEED_RATIO:g}x faster than restic",
                speed is not None and speed >= TARGET_SPEED_RATIO,
            ),
            ("repository after prune smaller than restic's", c["bytes_after"] < r["bytes_after"]),
            (f"Capsule peak RSS under {TARGET_RSS_BYTES // MB} MB", c["peak_rss_bytes"] < TARGET_RSS_BYTES),
        ]
        lines += [f"{'PASS' if ok else 'FAIL'}  {label}" for label, ok in targets]
        only_capsule, only_restic = kept_apart(report["runs"])
        if only_capsule or only_restic:
            lines.append(
                "note: the tools did not keep the same snapshots: "
                f"Capsule alone kept {len(only_capsule)} ({', '.join(only_capsule[:3])}), "
                f"restic alone {len(only_restic)} ({', '.join(only_restic[:3])})"
            )
    return lines


def kept_apart(runs: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """The snapshot times only Capsule kept and those only restic kept, in the first run of each."""
    capsule = set(runs["capsule"][0].get("kept", [])) if runs.get("capsule") else set()
    restic = set(runs["restic"][0].get("kept", [])) if runs.get("restic") else set()
    return sorted(capsule - restic), sorted(restic - capsule)


# --- command line -----------------------------------------------------------------------------


def _tools(text: str) -> list[str]:
    tools = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tools if t not in ("capsule", "restic")]
    if unknown or not tools:
        raise argparse.ArgumentTypeError(f"--tools takes capsule, restic or both, not {text!r}")
    return tools


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_retention", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="phase", required=True)
    history = commands.add_parser("history", help="back up a simulated month of hours with both tools")
    history.add_argument("--workdir", type=Path, required=True)
    history.add_argument("--db-mib", type=int, default=256)
    history.add_argument("--hours", type=int, default=720)
    history.add_argument("--change-percent", type=float, default=1.0)
    history.add_argument("--seed", type=int, default=0)
    history.add_argument(
        "--tools",
        type=_tools,
        default=TOOLS,
        help="capsule,restic (the default) or capsule alone: for a large database's memory check",
    )
    history.add_argument(
        "--min-free-gb",
        type=float,
        default=10.0,
        help="stop (to go on later) before an hour when the disk has less free space than this",
    )
    history.add_argument("--json", action="store_true", help="print the history's summary as JSON")
    prune = commands.add_parser("prune", help="time forget and prune on fresh copies of the history")
    prune.add_argument("--workdir", type=Path, required=True)
    prune.add_argument("--runs", type=int, default=3)
    prune.add_argument("--tools", type=_tools, default=TOOLS)
    prune.add_argument(
        "--link",
        action="store_true",
        help="hard-link the history's files instead of copying them (checked unchanged after each run)",
    )
    prune.add_argument(
        "--repack-unused-percent",
        type=int,
        choices=range(101),
        metavar="0-100",
        help="Capsule's threshold for repacking a partly used pack (0: every pack with an unused byte)",
    )
    prune.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    prune.add_argument("--json-out", type=Path, help="also write the report as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    restic = shutil.which("restic") or ""
    if not restic and "restic" in args.tools:
        print("restic is not installed: apt-get install restic, or give --tools capsule", file=sys.stderr)
        return 1
    if args.phase == "history":
        if args.db_mib < 1 or args.hours < 1 or not 0 < args.change_percent <= 100:
            print("--db-mib and --hours must be at least 1, --change-percent in (0, 100]", file=sys.stderr)
            return 2
        state = build_history(
            args.workdir,
            db_mib=args.db_mib,
            hours=args.hours,
            change_percent=args.change_percent,
            seed=args.seed,
            restic=restic,
            tools=args.tools,
            min_free_bytes=int(args.min_free_gb * 1000 * MB),
        )
        summary = history_summary(state, Layout(args.workdir))
        print(json.dumps(summary, indent=1) if args.json else _summary_text(summary))
        return 0
    if args.runs < 1:
        print("--runs must be at least 1", file=sys.stderr)
        return 2
    try:
        report = run_prune(
            args.workdir,
            runs=args.runs,
            tools=args.tools,
            restic=restic,
            link=args.link,
            repack_unused_percent=args.repack_unused_percent,
        )
    except CommandFailedError as exc:
        print(f"a command failed, so the run has no figures: {exc}", file=sys.stderr)
        return 1
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1) if args.json else "\n".join(report_lines(report)))
    return 0


def _summary_text(summary: dict[str, Any]) -> str:
    parts = ", ".join(
        f"{k.removesuffix('_seconds')} {v} s" for k, v in summary["median_seconds"].items() if v is not None
    )
    sizes = ", ".join(f"{tool} {_mb(size)}" for tool, size in summary.get("repository_bytes", {}).items())
    return (
        f"{summary['hours']} hours of a {summary['db_mib']} MiB database; per hour (median): {parts}; "
        f"{summary['seconds_per_hour']} s an hour in all; repositories: {sizes}"
    )


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    sys.exit(main())
