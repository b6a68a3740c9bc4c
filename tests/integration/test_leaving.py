"""How the `capsule` process ends (`capsule.api.entry.leave`): as the interpreter would, without
taking every module apart: exit functions run, what was written is flushed, a thread that is not a
daemon is waited for, and a message as exit status is printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _leaving(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a process of its own, then `leave()` with its `code` as the entry point does."""
    program = "\n".join(
        ["import atexit, sys, threading", "from capsule.api.entry import leave", body, "leave(code)"]
    )
    return subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )


def test_leaving_runs_exit_functions_and_flushes_what_was_written(tmp_path: Path) -> None:
    done = _leaving(
        tmp_path,
        "atexit.register(lambda: open('exited', 'w').write('yes'))\n"
        "sys.stdout.write('x' * 100_000)\n"
        "code = 3",
    )
    assert done.returncode == 3
    assert len(done.stdout) == 100_000
    assert (tmp_path / "exited").read_text() == "yes"


def test_leaving_waits_for_a_thread_that_is_not_a_daemon(tmp_path: Path) -> None:
    done = _leaving(
        tmp_path,
        "import time\n"
        "def late():\n"
        "    time.sleep(0.2)\n"
        "    open('late', 'w').write('written')\n"
        "threading.Thread(target=late).start()\n"
        "code = 0",
    )
    assert done.returncode == 0
    assert (tmp_path / "late").read_text() == "written"


def test_leaving_with_a_message_prints_it_as_the_interpreter_does(tmp_path: Path) -> None:
    done = _leaving(tmp_path, "code = 'capsule: no'")
    assert done.returncode == 1
    assert done.stderr.strip() == "capsule: no"


# `open` is bound early: by the time the interpreter's exit finalizes `held`, builtins are gone.
HELD = "class Held:\n    def __del__(self, open=open):\n        open('taken-apart', 'w')\nheld = Held()"


def test_leaving_skips_taking_the_modules_apart(tmp_path: Path) -> None:
    """What the interpreter's own exit would do last, and what costs a job's process its tenth:
    an object the program holds to its end is not finalized one by one."""
    done = _leaving(tmp_path, HELD + "\ncode = 0")
    assert done.returncode == 0
    assert not (tmp_path / "taken-apart").exists()
    again = subprocess.run([sys.executable, "-c", HELD], cwd=tmp_path, timeout=60, check=False)
    assert again.returncode == 0
    assert (tmp_path / "taken-apart").exists()  # the interpreter's own exit would have
