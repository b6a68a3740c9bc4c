"""Helpers for tests that drive the real `capsule` command on real SQLite files.

Every command runs in a child process with its own environment (CAPSULE_* variables only from the
shop under test) and its working directory in the test's temporary folder, as a shop owner would run
it. Every call checks that no Python traceback reached stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from benchmarks import posdb
from capsule.adapters.repository.lock import pid_alive
from capsule.adapters.sqlite.backup import COPY_SUFFIX, RAM_DIR
from tests.servers import in_ci

if TYPE_CHECKING:
    from capsule.orchestrator.settings import Settings

MiB = 1024 * 1024
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


FAST_STEPS = {
    "CAPSULE_STEP_LEASE_SECONDS": "2",
    "CAPSULE_HEARTBEAT_SECONDS": "0.5",
    "CAPSULE_SWEEP_SECONDS": "0.3",
    "CAPSULE_STEP_BACKOFF_SECONDS": "0.2",
    "CAPSULE_STEP_BACKOFF_MAX_SECONDS": "0.5",
}
"""Short leases, heartbeats, sweeps and backoffs: a job killed mid-step is taken over in seconds."""


def in_process_settings(shop: Shop, **changes: object) -> Settings:
    """Settings for running use cases on `shop` in the test process: fast steps, one attempt, and
    nice 0 (a backup would otherwise lower the priority of the test process itself)."""
    from capsule.orchestrator.settings import Settings

    fields: dict[str, object] = {
        "database": shop.database,
        "repository": shop.repository,
        "home": shop.home,
        "nice": 0,
        "step_max_attempts": 1,
        **{k.removeprefix("CAPSULE_").lower(): v for k, v in FAST_STEPS.items()},
        **changes,
    }
    return Settings.model_validate(fields)


def capsule_command() -> list[str]:
    """The installed `capsule` script of this interpreter, else the one on PATH, else the module."""
    beside = Path(sys.executable).with_name("capsule")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("capsule")
    if found:
        return [found]
    return [sys.executable, "-P", "-c", "from capsule.api.cli import main; main()"]


CAPSULE = capsule_command()


def clean_env() -> dict[str, str]:
    """The test process's environment without any CAPSULE_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CAPSULE_")}


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"command {proc.args!r} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def is_json_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The structured log records a command wrote on stderr."""
    return [json.loads(line) for line in stderr.splitlines() if is_json_line(line)]


def message_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not log records: the command's own messages."""
    return [line for line in stderr.splitlines() if line.strip() and not is_json_line(line)]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed with exactly one `capsule: ...` line and return it."""
    assert proc.returncode != 0, describe(proc)
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("capsule: "), describe(proc)
    return lines[0]


def unreadable_runner(path: Path) -> list[str]:
    """Make `path` unreadable to the `capsule` process about to run; return its command prefix.

    Root reads any file, so as root the process runs without the capabilities that let it
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the root-owned file's mode 0000 then stops it too.
    """
    os.chmod(path, 0)
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        message = "no setpriv here to run capsule as root without the right to read any file"
        if in_ci():
            pytest.fail(f"{message}; CI must run this test", pytrace=False)
        pytest.skip(message)
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def side_files(path: Path) -> list[Path]:
    return [Path(f"{path}{s}") for s in SIDE_SUFFIXES if Path(f"{path}{s}").exists()]


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` (hidden ones included), as sorted relative paths."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def connect_immutable(path: Path) -> sqlite3.Connection:
    """Read a database file that no one writes, leaving no -wal/-shm file beside it."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)


def sales_count(path: Path) -> int:
    conn = connect_read_only(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM sales").fetchone()[0])
    finally:
        conn.close()


def content_digest(conn: sqlite3.Connection) -> str:
    """A digest of every row of every table, in rowid order: equal digests mean equal content."""
    h = hashlib.sha256()
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    for table in tables:
        h.update(table.encode())
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
            h.update(repr(row).encode())
    return h.hexdigest()


def file_content_digest(path: Path, *, immutable: bool = False) -> str:
    conn = connect_immutable(path) if immutable else connect_read_only(path)
    try:
        return content_digest(conn)
    finally:
        conn.close()


def flip_byte(path: Path, offset: int | None = None) -> int:
    """Invert one byte of a file in place (the middle one by default); return its offset."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return at


def made_once(made: Path, make: Callable[[Path], None]) -> Path:
    """`made`, made by `make(made)` by the first test process to ask for it; the others wait for it.

    A file lock beside it lets test processes share what is slow to make (a large database, a
    repository with history); `make` writes into `made` and a mark says it finished.
    """
    done = made.with_name(made.name + ".done")
    if done.exists():
        return made
    made.parent.mkdir(parents=True, exist_ok=True)
    with open(made.with_name(made.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if made.is_dir():
                shutil.rmtree(made)
            elif made.exists():
                made.unlink()
            make(made)
            done.touch()
    return made


class DatabaseTemplates:
    """Generated POS databases, made once per run (shared by the test processes) and copied into each
    test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def copy(self, target: Path, *, size_mib: int = 4, journal_mode: str = "wal", seed: int = 0) -> Path:
        def generate(template: Path) -> None:
            for extra in side_files(template):  # left by a run that stopped while making it
                extra.unlink()
            posdb.generate(template, size_mib * MiB, journal_mode=journal_mode, seed=seed)
            conn = sqlite3.connect(template)
            try:
                if journal_mode == "wal":
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            for extra in side_files(template):
                extra.unlink()

        template = made_once(self.folder / f"pos-{size_mib}m-{journal_mode}-{seed}.db", generate)
        target.parent.mkdir(parents=True, exist_ok=True)
        for extra in side_files(target):
            extra.unlink()
        shutil.copyfile(template, target)
        return target


def _copy_pid(path: Path) -> int:
    """The PID in a copy's name: `<database>.<pid>-<random>.capsule-snapshot`."""
    middle = path.name[: -len(COPY_SUFFIX)].rsplit(".", 1)[-1]
    return int(middle.split("-")[0]) if middle.split("-")[0].isdigit() else -1


@dataclass
class Shop:
    """One point-of-sale server's files: the live database, the repository and Capsule's home."""

    root: Path
    db_name: str = "pos.db"

    @property
    def database(self) -> Path:
        return self.root / "data" / self.db_name

    @property
    def repository(self) -> Path:
        return self.root / "backups"

    @property
    def home(self) -> Path:
        return self.root / "capsule-home"

    @property
    def key_file(self) -> Path:
        return self.home / "repository.key"

    @property
    def staging(self) -> Path:
        return self.home / "staging"

    def leftover_copies(self) -> list[str]:
        """Database copies left behind by backups that are gone, in staging or in the RAM folder.

        The RAM folder is shared: a copy whose process still runs belongs to another test.
        """
        pattern = f"{self.db_name}.*{COPY_SUFFIX}"
        ram = RAM_DIR / f"capsule-{os.getuid()}"
        found = [p for d in (self.staging, ram) if d.is_dir() for p in d.glob(pattern)]
        return sorted(str(p) for p in found if _copy_pid(p) <= 0 or not pid_alive(_copy_pid(p)))

    def env(self, overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
        env = clean_env()
        env.update(
            CAPSULE_DATABASE=str(self.database),
            CAPSULE_REPOSITORY=str(self.repository),
            CAPSULE_HOME=str(self.home),
        )
        for key, value in (overrides or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def run(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        expect: int | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CAPSULE, *args],
            cwd=self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in proc.stderr, describe(proc)
        if expect is not None:
            assert proc.returncode == expect, describe(proc)
        return proc

    def popen(self, *args: str, env: Mapping[str, str | None] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CAPSULE, *args],
            cwd=self.root,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def init(self, *args: str, env: Mapping[str, str | None] | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.run("init", *args, env=env, expect=0)

    def backup(
        self, *args: str, env: Mapping[str, str | None] | None = None, expect: int = 0
    ) -> dict[str, Any]:
        """`capsule backup --kind database --json`; `expect` 3 for a backup with warnings."""
        proc = self.run("backup", "--kind", "database", "--json", *args, env=env, expect=expect)
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def snapshots(self, env: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
        proc = self.run("snapshots", "--json", env=env, expect=0)
        rows: list[dict[str, Any]] = json.loads(proc.stdout)
        return rows

    def cat(
        self,
        ref: str,
        path: str,
        out: Path,
        env: Mapping[str, str | None] | None = None,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`capsule cat REF PATH [extra] > out`, stdout a real file as a shop owner's shell would make it."""
        with open(out, "wb") as f:
            proc = subprocess.run(
                [*CAPSULE, "cat", ref, path, *extra],
                cwd=self.root,
                env=self.env(env),
                stdout=f,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
        assert "Traceback" not in proc.stderr, describe(proc)
        return proc

    def restore(
        self, ref: str, to: Path, *extra: str, expect: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        return self.run("restore", ref, "--to", str(to), *extra, expect=expect)

    def manifest_sha256(self, snapshot_id: str) -> str:
        """The SHA-256 of the snapshot's database file (read with the API): the one its manifest
        records, or, for a snapshot built on its parent's pages (no SHA-256 in its entry), that of
        its chunks read back in this process, each checked against its id."""
        import hashlib

        from capsule.adapters.repository.restore import blob_batches, locate_all
        from capsule.orchestrator.settings import Settings
        from capsule.orchestrator.usecases.repository import open_repository

        settings = Settings(database=self.database, repository=self.repository, home=self.home)
        repo = open_repository(settings)
        manifest = repo.load_snapshot(snapshot_id)
        assert len(manifest.entries) == 1
        entry = manifest.entries[0]
        if entry.sha256 is not None:
            return entry.sha256
        assert manifest.version == 3 and entry.sqlite is not None
        repo.ensure_index()
        sha = hashlib.sha256()
        for batch in blob_batches(locate_all(repo, entry)):
            for data in repo.read_blobs(batch, check_id=True):
                sha.update(data)
        return sha.hexdigest()

    def journal_mode_of(self, snapshot_id: str) -> str:
        from capsule.orchestrator.settings import Settings
        from capsule.orchestrator.usecases.repository import open_repository

        settings = Settings(database=self.database, repository=self.repository, home=self.home)
        sqlite = open_repository(settings).load_snapshot(snapshot_id).entries[0].sqlite
        assert sqlite is not None
        return sqlite.journal_mode

    def packs(self) -> list[Path]:
        return sorted(p for p in (self.repository / "data").glob("*/*") if not p.name.startswith("."))

    def index_files(self) -> list[Path]:
        return sorted(p for p in (self.repository / "index").iterdir() if not p.name.startswith("."))

    def snapshot_file(self, snapshot_id: str) -> Path:
        return self.repository / "snapshots" / snapshot_id

    def jobs_seen(self) -> list[dict[str, Any]]:
        """The jobs as `capsule jobs --json` lists them, read here from the jobs table of the event log,
        opened read-only: for a test that waits until a job runs, without a process per look (each
        costs most of a core for half a second, taken from the process the test waits for)."""
        from sqlalchemy import create_engine

        from capsule.orchestrator import projections

        log = self.home / "events.db"
        if not log.is_file():
            return []
        engine = create_engine(f"sqlite:///{log.resolve().as_uri()}?mode=ro&uri=true")
        try:
            with engine.connect() as conn:
                has_jobs = conn.exec_driver_sql(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
                ).first()
                return projections.list_jobs(conn) if has_jobs else []
        finally:
            engine.dispose()

    def lock_files(self) -> list[Path]:
        """The locks in the repository; a lock being written (under a temporary name, renamed
        once whole) is not one yet."""
        return sorted(p for p in (self.repository / "locks").iterdir() if not p.name.startswith("."))


def copy_shop(source: Shop, root: Path) -> Shop:
    """A copy of a whole shop (database, repository, key) under a new root."""
    shutil.copytree(source.root, root, symlinks=True)
    return Shop(root, source.db_name)


@contextlib.contextmanager
def running(proc: subprocess.Popen[str]) -> Any:
    """Make sure a child process we started does not outlive the test."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
