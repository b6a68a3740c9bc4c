"""A command loads only what it needs: `--help`, `snapshots`, `status` and `jobs` start without
SQLAlchemy, numpy, Dramatiq or the worker pool (each takes longer to load than these commands take
to answer); a job's process loads its own job type's steps and engine, not the others'.

Each command runs as the `capsule` script runs it (`capsule.api.entry.main`), in a process of its
own, which writes the names of its loaded modules to a file as it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capsule.orchestrator.collector import HELD_BACK
from tests.integration.helpers import DatabaseTemplates, Shop, describe
from tests.integration.uploads import make_uploads

HEAVY = ("sqlalchemy", "numpy", "dramatiq", "capsule.adapters.workers")

RUN_AND_LIST = """
import atexit, sys
out, sys.argv = sys.argv[1], ["capsule", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
from capsule.api.entry import main
main()
"""


def loaded_modules(shop: Shop, tmp_path: Path, *args: str) -> set[str]:
    """Run `capsule ARGS` in `shop` (its images in `uploads`); the modules it had loaded when it exited."""
    listing = tmp_path / "modules.txt"
    _run_script(shop, RUN_AND_LIST, listing, *args)
    return set(listing.read_text().split())


def _run_script(shop: Shop, script: str, out: Path, *args: str) -> None:
    """Run `script` (which writes what it found to `out` at exit) as `capsule ARGS` in `shop`."""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out), *args],
        cwd=shop.root,
        env=shop.env({"CAPSULE_UPLOADS": str(shop.root / "uploads")}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, describe(proc)


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory, templates: DatabaseTemplates) -> Shop:
    """A shop with a snapshot of each kind, so that both commands read real rows and manifests."""
    shop = Shop(tmp_path_factory.mktemp("startup") / "shop")
    templates.copy(shop.database)
    make_uploads(shop.root / "uploads")
    env = {"CAPSULE_UPLOADS": str(shop.root / "uploads")}
    shop.init()
    shop.run("backup", "--kind", "all", env=env, expect=0)
    return shop


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("snapshots",),
        ("snapshots", "--json"),
        ("status",),
        ("status", "--json"),
        ("jobs",),
        ("jobs", "--json"),
    ],
    ids=" ".join,
)
def test_reading_commands_load_no_database_toolkit_numpy_or_workers(
    backed_up: Shop, tmp_path: Path, args: tuple[str, ...]
) -> None:
    modules = loaded_modules(backed_up, tmp_path, *args)
    assert "capsule.api.entry" in modules  # the listing is of a real run
    assert heavy_among(modules) == []


def test_the_top_help_loads_no_command_module(backed_up: Shop, tmp_path: Path) -> None:
    modules = loaded_modules(backed_up, tmp_path, "--help")
    assert sorted(m for m in modules if m.startswith("capsule.api.cli_")) == []
    assert sorted(m for m in modules if m.startswith(("pydantic", "structlog"))) == []


@pytest.mark.parametrize("command", ["snapshots", "status"])
def test_a_reading_command_that_logs_nothing_loads_no_structlog(
    backed_up: Shop, tmp_path: Path, command: str
) -> None:
    assert not any(m.startswith("structlog") for m in loaded_modules(backed_up, tmp_path, command))


EVENT_LOG = ("sqlalchemy", "dramatiq", "capsule.domain.events", "capsule.orchestrator.eventstore")


def test_cat_loads_neither_the_event_log_nor_pydantic_settings_nor_structlog(
    backed_up: Shop, tmp_path: Path
) -> None:
    """`cat` only reads the repository: it records nothing, so the event log's models, its database
    toolkit and the broker stay unloaded; the settings are read without pydantic-settings; it logs
    nothing, so structlog (and asyncio, which structlog loads) stays unloaded too."""
    modules = loaded_modules(backed_up, tmp_path, "cat", "latest-files", "cat1/notes.txt")
    assert "capsule.adapters.files.restore" in modules  # the file was really read
    loaded = sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in EVENT_LOG))
    assert loaded == []
    assert sorted(m for m in modules if m.startswith("pydantic_settings")) == []
    assert sorted(m for m in modules if m.startswith(("structlog", "asyncio"))) == []


@pytest.mark.parametrize("command", ["snapshots", "status", "jobs"])
def test_a_reading_command_opens_no_log_file_handler(backed_up: Shop, tmp_path: Path, command: str) -> None:
    """The standard library's rotating file handler (and `socket`, `pickle` with it) loads only
    once a line is written to the log file."""
    assert "logging.handlers" not in loaded_modules(backed_up, tmp_path, command)


BACKUP_ENGINES = (
    "capsule.orchestrator.backupsteps",
    "capsule.adapters.files.backup",
    "capsule.adapters.repository.backups",
    "pyfastcdc",
)
"""A backup's steps, the images' tree walker and chunker, and what both kinds of backup share."""
DATABASE_BACKUP = (
    "capsule.adapters.sqlite.backup",
    "capsule.adapters.sqlite.livecopy",
    "capsule.adapters.sqlite.inplace",
)
"""The database's backup: its live copy, the checkpoint keeper, the frozen image it reads in place."""
RESTORE_ENGINES = ("capsule.orchestrator.restoresteps", "capsule.adapters.files.restore")


def among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m in names)


def test_a_restore_of_one_image_loads_no_backup_engine(backed_up: Shop, tmp_path: Path) -> None:
    """`restore --include` of one file runs the restore's steps alone: neither kind of backup's
    engine loads, nor the chunker the images' backup cuts files with."""
    to = tmp_path / "out"
    modules = loaded_modules(
        backed_up, tmp_path, "restore", "latest-files", "--to", str(to), "--include", "cat1/notes.txt"
    )
    assert (to / "cat1" / "notes.txt").is_file()
    assert among(modules, RESTORE_ENGINES) == sorted(RESTORE_ENGINES)  # it ran the restore's steps
    assert among(modules, BACKUP_ENGINES + DATABASE_BACKUP) == []
    assert "multiprocessing" not in modules  # only a replay of a large log starts processes with it


def test_cat_loads_no_backup_engine_and_nothing_of_sqlite(backed_up: Shop, tmp_path: Path) -> None:
    """`cat` of an image opens no database: neither Capsule's SQLite code (the database's check,
    its identity, its page store) nor the standard library's `sqlite3` loads."""
    modules = loaded_modules(backed_up, tmp_path, "cat", "latest-files", "cat1/notes.txt")
    assert "capsule.adapters.files.restore" in modules  # the file was really read
    assert among(modules, BACKUP_ENGINES + DATABASE_BACKUP + RESTORE_ENGINES[:1]) == []
    assert sorted(m for m in modules if m.startswith(("capsule.adapters.sqlite", "sqlite3"))) == []


def test_a_backup_of_the_images_loads_neither_the_database_backup_nor_a_restore(
    backed_up: Shop, tmp_path: Path
) -> None:
    modules = loaded_modules(backed_up, tmp_path, "backup", "--kind", "files")
    assert among(modules, BACKUP_ENGINES) == sorted(BACKUP_ENGINES)  # it backed the images up
    assert among(modules, DATABASE_BACKUP + RESTORE_ENGINES) == []
    assert "multiprocessing" not in modules


RUN_AND_COUNT = """
import atexit, gc, json, sys
out, sys.argv = sys.argv[1], ["capsule", *sys.argv[2:]]
usual, collections = gc.get_threshold(), [0, 0, 0]

def count(phase, info):
    if phase == "stop":
        collections[info["generation"]] += 1

gc.callbacks.append(count)
report = lambda: {"usual": usual, "at_exit": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "collections": collections}
atexit.register(lambda: open(out, "w").write(json.dumps(report())))
from capsule.api.entry import main
main()
"""


def collector_of(shop: Shop, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run `capsule ARGS` in `shop`; its collector's thresholds before and at exit, the objects it
    had frozen and its collections of each generation."""
    report = tmp_path / "collector.json"
    _run_script(shop, RUN_AND_COUNT, report, *args)
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def test_a_job_process_freezes_its_modules_and_makes_no_full_collection(
    backed_up: Shop, tmp_path: Path
) -> None:
    """The collector is held back while the modules load; once the job's runtime is built they are
    frozen and the usual thresholds return (capsule.orchestrator.collector). With the usual
    thresholds all along, the restore walked every module's objects again in full collections."""
    to = tmp_path / "out"
    gc_of = collector_of(
        backed_up, tmp_path, "restore", "latest-files", "--to", str(to), "--include", "cat1/notes.txt"
    )
    assert (to / "cat1" / "notes.txt").is_file()
    assert gc_of["at_exit"] == gc_of["usual"]
    assert gc_of["frozen"] > 0
    assert gc_of["collections"][2] == 0


def test_a_reading_command_keeps_the_collector_held_back(backed_up: Shop, tmp_path: Path) -> None:
    gc_of = collector_of(backed_up, tmp_path, "cat", "latest-files", "cat1/notes.txt")
    assert gc_of["at_exit"] == [HELD_BACK, *gc_of["usual"][1:]]
    assert gc_of["collections"][1:] == [0, 0]


def test_a_backup_loads_the_file_handler_and_writes_it_but_not_the_other_jobs_steps(
    backed_up: Shop, tmp_path: Path
) -> None:
    log = backed_up.home / "logs" / "capsule.log"
    before = log.read_text() if log.exists() else ""
    modules = loaded_modules(backed_up, tmp_path, "backup")
    assert "logging.handlers" in modules
    assert len(log.read_text()) > len(before)
    assert "capsule.orchestrator.steps" in modules  # it ran its steps
    assert "capsule.orchestrator.drillsteps" not in modules
    assert "capsule.orchestrator.prunesteps" not in modules


def test_forget_and_prune_load_neither_the_drills_nor_the_restores_modules(
    backed_up: Shop, tmp_path: Path
) -> None:
    """`forget --prune` runs the prune job in its own process: the drill's scratch folders and the
    restore's partial files are cleaned by those jobs alone, and their modules stay unloaded."""
    modules = loaded_modules(backed_up, tmp_path, "forget", "--prune")
    assert "capsule.orchestrator.prunesteps" in modules  # it ran the prune's steps
    loaded = ("capsule.adapters.drill", "capsule.adapters.files.restore", "capsule.orchestrator.drillsteps")
    assert sorted(m for m in modules if m in loaded) == []


def test_the_listing_sees_a_heavy_module_when_a_command_loads_one(backed_up: Shop, tmp_path: Path) -> None:
    """`audit` reads the event log through the event store, and SQLAlchemy: the check above can fail."""
    assert "sqlalchemy" in heavy_among(loaded_modules(backed_up, tmp_path, "audit"))
