"""Which command lines give the images folder a head start, and that it ends with the command; and
the list of files a command loaded, recorded for its next run to ask of the disk early (see
api/entry.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from capsule.api import entry
from capsule.api.entry import DEFAULT_UPLOADS, folder_to_look_at, startup_list


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "--kind", "files"], "/srv/uploads"),
        (["--log-level", "warning", "backup", "--kind=all", "--json"], "/srv/uploads"),
        (["backup"], None),
        (["backup", "--kind", "database"], None),
        (["restore", "latest-files", "--to", "x"], None),
        (["snapshots"], None),
        (["backup", "--kind"], None),
    ],
)
def test_only_a_backup_of_the_images_looks_at_the_folder(argv: list[str], expected: str | None) -> None:
    assert folder_to_look_at(argv, {"CAPSULE_UPLOADS": "/srv/uploads"}) == expected


def test_without_the_setting_the_default_folder_is_used() -> None:
    assert folder_to_look_at(["backup", "--kind", "all"], {}) == DEFAULT_UPLOADS


def test_the_look_goes_through_the_folders_in_the_walk_s_order(tmp_path: Path) -> None:
    # It must stay ahead of the walk: a folder it reads after the walk needs it is read twice over.
    from capsule.adapters.files.walk import Walk

    root = tmp_path / "uploads"
    for folder in ("b", "a/z", "a/c/deep", "a/c/b", "C", "a0", "a-1", "é", "b/a"):
        (root / folder).mkdir(parents=True)
        (root / folder / "item.jpg").write_bytes(b"x")
    (root / "a" / "file").write_bytes(b"x")
    spy = (
        "import os\n"
        "_scandir = os.scandir\n"
        "def _seen(path):\n"
        "    print(os.path.relpath(path, os.environ['ROOT']), flush=True)\n"
        "    return _scandir(path)\n"
        "os.scandir = _seen\n"
    )
    looked = subprocess.run(
        [sys.executable, "-S", "-c", spy + entry._LOOK, str(root)],
        env={**os.environ, "ROOT": str(root)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")[:-1]

    walk = Walk(lambda path, reason: None, lambda: None)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walked = [path for path, _, st, _ in walk(root_fd) if os.path.isdir(root / path)]
    finally:
        walk.close()
        os.close(root_fd)
    assert looked == [".", *walked]
    assert len(walked) == 11


def test_the_process_that_looks_at_the_folder_does_not_outlive_the_command(tmp_path: Path) -> None:
    # A look that would take half a minute, and a backup that fails at once (no repository): the
    # command ends first, and nothing of it is left running in its process group.
    (tmp_path / "uploads").mkdir()
    script = (
        "import sys, capsule.api.entry as entry\n"
        "entry._LOOK = 'import time; time.sleep(30)'\n"
        "sys.argv = ['capsule', 'backup', '--kind', 'files']\n"
        "entry.main()\n"
    )
    env = {
        **os.environ,
        "CAPSULE_UPLOADS": str(tmp_path / "uploads"),
        "CAPSULE_REPOSITORY": str(tmp_path / "no-repository"),
        "CAPSULE_HOME": str(tmp_path / "home"),
        "CAPSULE_DATABASE": str(tmp_path / "pos.db"),
    }
    for name in ("CAPSULE_PASSPHRASE", "CAPSULE_KEY_FILE", "CAPSULE_EVENT_STORE_URL", "CAPSULE_BROKER_URL"):
        env.pop(name, None)
    command = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    _, err = command.communicate(timeout=60)
    assert command.returncode != 0, "the backup was meant to fail: there is no repository"
    assert b"repository" in err.lower()
    assert time.monotonic() - started < 25, "the command waited for the look"
    with pytest.raises(ProcessLookupError):
        os.killpg(command.pid, 0)  # the group is empty: the look was stopped with the command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "--kind", "files"], "/home/c/cache/startup-backup"),
        (["--log-level", "debug", "--log-format", "json", "restore", "x"], "/home/c/cache/startup-restore"),
        (["--version"], None),
        (["--log-level", "debug"], None),
        ([], None),
        (["../../etc/passwd"], None),
        (["status", "--check"], "/home/c/cache/startup-status"),
    ],
)
def test_each_command_has_its_own_startup_list_in_the_home(argv: list[str], expected: str | None) -> None:
    assert startup_list(argv, {"CAPSULE_HOME": "/home/c"}) == expected


def test_the_startup_list_is_written_once_a_day_only_in_a_home_that_is_there(tmp_path: Path) -> None:
    path = str(tmp_path / "home" / "cache" / "startup-snapshots")
    entry.record_startup(path, time.time())
    assert not os.path.exists(tmp_path / "home"), "no home yet: nothing is created"

    (tmp_path / "home").mkdir()
    entry.record_startup(path, time.time())
    assert os.stat(tmp_path / "home" / "cache").st_mode & 0o777 == 0o700
    names = Path(path).read_text().splitlines()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert _loaded_as(entry) in names, "this module's compiled code (or source) is listed"
    assert all(os.path.isfile(name) for name in names)
    assert not any(name.endswith(".py") and os.path.isfile(name[:-3] + ".pyc") for name in names)
    assert names.index(_loaded_as(pytest)) < names.index(_loaded_as(entry)), "in the order of import"

    Path(path).write_text("kept\n")
    entry.record_startup(path, time.time())
    assert Path(path).read_text() == "kept\n", "a list of today is kept"
    entry.record_startup(path, time.time() + 2 * 86400)
    assert _loaded_as(entry) in Path(path).read_text().splitlines(), "an old one is written again"
    assert os.listdir(tmp_path / "home" / "cache") == ["startup-snapshots"], "no temporary file left"


def _loaded_as(module: Any) -> str:
    """The file of `module` that a run reads: its compiled code, or its source where none is."""
    cached: str = module.__cached__
    return cached if os.path.isfile(cached) else module.__file__


def _command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "CAPSULE_HOME": str(tmp_path / "home"), "CAPSULE_REPOSITORY": str(tmp_path / "repo")}
    for name in ("CAPSULE_PASSPHRASE", "CAPSULE_KEY_FILE", "CAPSULE_EVENT_STORE_URL", "CAPSULE_BROKER_URL"):
        env.pop(name, None)
    script = f"import sys, capsule.api.entry as entry\nsys.argv = {['capsule', *args]!r}\nentry.main()\n"
    return subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, timeout=120
    )


def test_a_command_records_what_it_loaded_and_the_next_run_reads_a_stale_list_without_harm(
    tmp_path: Path,
) -> None:
    assert _command(tmp_path, "init").returncode == 0
    listed = tmp_path / "home" / "cache" / "startup-snapshots"
    assert _command(tmp_path, "snapshots").returncode == 0
    names = listed.read_text().splitlines()
    assert any(os.path.basename(name).startswith("cli.") for name in names)
    assert any(".so" in os.path.basename(name) for name in names)

    # A list from before an upgrade: files gone, a folder, a line that is no path.
    listed.write_text(f"{tmp_path / 'gone.pyc'}\n{tmp_path}\n\x00nonsense\n" + "\n".join(names[:5]) + "\n")
    again = _command(tmp_path, "snapshots")
    assert again.returncode == 0, again.stderr
    assert b"No snapshots" in again.stdout or again.stdout.strip() != b""


def test_a_command_that_fails_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "home" / "cache").mkdir(parents=True)
    failed = _command(tmp_path, "snapshots")  # no repository
    assert failed.returncode != 0
    assert not (tmp_path / "home" / "cache" / "startup-snapshots").exists()
