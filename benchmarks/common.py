"""What the benchmarks share: measured commands, the Capsule command line, step runs, tables.

Standard library only.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

MB = 1_000_000
SETTLE_SECONDS = 3.0  # see run_measured
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


# --- measured commands --------------------------------------------------------------------------


class CommandFailedError(RuntimeError):
    pass


@dataclass
class CommandResult:
    argv: list[str]
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    cpu_seconds: float = 0.0
    """User and system time of the command and its children (less sensitive to a busy machine)."""


# Peak RSS must come from a process forked by a small parent: Linux carries the parent's memory
# high-water mark into a child's ru_maxrss across fork and exec, and a benchmark process can
# grow large (page digests, memory-mapped checks). So a tiny launcher forks the command,
# waits for it with wait4 and writes the exact figures to a file.
_LAUNCHER = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as exc:
    print(f"cannot run {argv[0]}: {exc}", file=sys.stderr)
    sys.exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as out:
    cpu = usage.ru_utime + usage.ru_stime
    json.dump({"seconds": seconds, "cpu": cpu, "maxrss": usage.ru_maxrss, "status": status}, out)
"""


def _rss_bytes(ru_maxrss: int) -> int:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def run_measured(
    argv: list[str],
    env: dict[str, str],
    *,
    check: bool = True,
    cwd: Path | None = None,
    stdout_path: Path | None = None,
) -> CommandResult:
    """Run a command; its wall time and peak RSS are measured exactly by a tiny launcher.

    ``stdout_path`` sends the command's standard output, as bytes, to that file instead of
    ``CommandResult.stdout`` (for commands that print a file's contents).
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as scratch,
        open(stdout_path or os.devnull, "wb") as binary_out,
    ):
        report = Path(scratch) / "usage.json"
        # Each tool pays for flushing its own writes, not for what the previous command left dirty
        # (restic does not fsync; Capsule does, and its fsyncs would wait behind restic's data).
        os.sync()
        # On a virtual machine, memory a command frees is handed back to the host within about a
        # second, and the first write to a page taken from the host afterwards is slow (about
        # 2.7 s per GiB on the reference machine). Without a pause, the tool that runs second
        # would find the first one's freed memory still warm and the order of the tools would
        # decide the result; after it, every command starts alike.
        time.sleep(SETTLE_SECONDS)
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report)]
        returncode = subprocess.call(
            [*launcher, *argv],
            stdin=subprocess.DEVNULL,
            stdout=binary_out if stdout_path else out,
            stderr=err,
            env=env,
            cwd=cwd,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        usage = json.loads(report.read_text()) if report.exists() else None
    if usage is not None:
        returncode = os.waitstatus_to_exitcode(usage["status"])
    result = CommandResult(
        argv=argv,
        seconds=usage["seconds"] if usage else 0.0,
        peak_rss_bytes=_rss_bytes(usage["maxrss"]) if usage else 0,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        cpu_seconds=usage.get("cpu", 0.0) if usage else 0.0,
    )
    if check and result.returncode != 0:
        raise CommandFailedError(
            f"{' '.join(argv)} exited with {result.returncode}:\n"
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


def drop_page_cache() -> str | None:
    """Write dirty pages out and drop the page cache; the reason it could not, or None."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        return f"cannot write {DROP_CACHES}: {exc.strerror or exc}"
    return None


def directory_bytes(path: Path) -> int:
    """Sum of file sizes under ``path`` (what the repository occupies, ignoring blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def last_json_object(text: str) -> dict[str, Any]:
    """The JSON object a command printed, tolerating log lines around it."""
    with contextlib.suppress(json.JSONDecodeError):
        whole = json.loads(text)
        if isinstance(whole, dict):
            return whole
    for line in reversed(text.splitlines()):
        if line.lstrip().startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    return parsed
    raise ValueError(f"no JSON object in output: {text[-500:]!r}")


def restic_summary(stdout: str) -> dict[str, Any]:
    """The final summary object among restic's JSON progress lines."""
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return message
    return {}


def restic_env(repository: Path, workdir: Path) -> dict[str, str]:
    """This process's environment, with restic pointed at ``repository`` and a cache in ``workdir``."""
    env = dict(os.environ)
    env.update(
        RESTIC_REPOSITORY=str(repository),
        RESTIC_PASSWORD="benchmark",
        RESTIC_CACHE_DIR=str(workdir / "restic-cache"),
    )
    return env


# --- the Capsule command line -------------------------------------------------------------------


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


PACKAGES = ("domain", "orchestrator", "adapters", "api")


def compile_checkout(packages: Sequence[str] = PACKAGES) -> None:
    """Compile Capsule's modules to bytecode where they are imported from, as `pip install .` does
    for an installed copy.

    Where PYTHONDONTWRITEBYTECODE is set (on this reference machine it is), nothing caches the
    compiled modules of a checkout, and every command compiled all it imported before doing
    anything. An editable install maps the checkout's files into a folder of its own, and the
    bytecode is looked for beside the path a module was imported by: compiling the checkout alone
    reaches nothing then. Both are compiled (0.2 s of processor time of a `forget --prune`).
    """
    folders = [project_root() / package for package in packages]
    for package in packages:
        try:
            module = importlib.import_module(f"capsule.{package}")
        except ImportError:
            continue
        folders.extend(Path(folder) for folder in module.__path__)
    for folder in dict.fromkeys(folders):
        if folder.is_dir():
            compileall.compile_dir(folder, quiet=1)


def capsule_command() -> list[str] | None:
    """The ``capsule`` script installed beside this interpreter, else the first on PATH, else the CLI
    module from this checkout (compiled first).

    The script beside the interpreter comes first: a ``capsule`` found on PATH may be a version
    manager's shim (pyenv's is a shell script that starts pyenv), which adds its own start-up to
    every timed command (about 0.1 s on the reference machine).
    """
    compile_checkout()
    beside = Path(sys.executable).parent / "capsule"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    if found := shutil.which("capsule"):
        return [found]
    if importlib.util.find_spec("capsule") and importlib.util.find_spec("capsule.api.cli"):
        return [sys.executable, "-P", "-c", "import sys; from capsule.api.cli import main; sys.exit(main())"]
    return None


def capsule_env(command: list[str], settings: dict[str, str], *, drop: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment with ``settings`` applied and the ``drop`` variables removed."""
    env = dict(os.environ)
    for name in drop:
        env.pop(name, None)
    env.update(settings)
    return env


# --- runs and steps --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def scratch_directory(parent: Path | None, prefix: str, *, keep: bool) -> Iterator[Path]:
    """A new directory under ``parent`` (default: the system's temporary folder), removed at
    the end unless ``keep``."""
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield scratch
    finally:
        if keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


class Named(Protocol):
    name: str


ToolT = TypeVar("ToolT", bound=Named)


class Benchmark(Generic[ToolT]):
    """Runs each step for every tool still in the race.

    A tool whose ``required`` step fails drops out, noted under ``error``; a failed optional step
    is noted as ``{"failed": reason}`` under its label and the tool goes on to the next step.
    """

    def __init__(self, tools: list[ToolT], log: Callable[[str], None]) -> None:
        self.tools = tools
        self.log = log
        self.results: dict[str, dict[str, Any]] = {tool.name: {} for tool in tools}

    def step(
        self,
        label: str,
        action: Callable[[ToolT], dict[str, Any] | None],
        *,
        required: bool = True,
        reverse: bool = False,
    ) -> None:
        """Run `action` for each tool in turn (`reverse`: the last tool first)."""
        for tool in list(reversed(self.tools) if reverse else self.tools):
            self.log(f"{tool.name}: {label}")
            try:
                figures = action(tool)
            except Exception as exc:
                self.log(f"{tool.name}: {label} FAILED: {exc}")
                if required:
                    self.results[tool.name]["error"] = f"{label}: {exc}"
                    self.tools.remove(tool)
                else:
                    self.results[tool.name][label] = {"failed": str(exc)}
            else:
                if figures is not None:
                    self.results[tool.name][label] = figures


def peak_rss(steps: dict[str, Any]) -> int | None:
    """Highest peak RSS over every command of one tool's steps."""
    values = [v["peak_rss_bytes"] for v in steps.values() if isinstance(v, dict) and "peak_rss_bytes" in v]
    return max(values) if values else None


# --- reports ------------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def fmt_mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f} MB"


def align_columns(table: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in table]
