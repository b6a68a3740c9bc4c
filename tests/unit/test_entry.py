"""Which command lines give the images folder a head start, and that it ends with the command
(see api/entry.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capsule.api.entry import DEFAULT_UPLOADS, folder_to_look_at


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
