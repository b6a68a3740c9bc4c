"""Temporary files a restore writes beside their targets: `.<name>.capsule-restore-<pid>-<random>`.

A file is written under such a name, checked, and only then renamed into place, so a target never
holds half a file. The writer's PID in the name tells whose it is: a process that exits on Ctrl-C
or SIGTERM removes its own, and a later restore removes those whose process is gone (killed, or
the machine lost power), without touching one a restore running beside it is still writing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from capsule.adapters.repository.lock import pid_alive

PARTIAL_MARK = ".capsule-restore-"


def partial_name(name: str) -> str:
    """A new temporary name for a file `name`, owned by this process."""
    return f".{name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def partial_owner(name: str) -> int | None:
    """The PID in a temporary file's name; None if it has none (not one, or an older version's)."""
    _, mark, rest = name.partition(PARTIAL_MARK)
    pid, dash, _ = rest.partition("-")
    return int(pid) if mark and dash and pid.isdigit() else None


def is_abandoned(name: str) -> bool:
    """Whether `name` is a temporary file of a process of this host that is gone."""
    pid = partial_owner(name)
    return pid is not None and not pid_alive(pid)


def remove_abandoned(folder: Path, name: str) -> int:
    """Remove the temporary files beside `folder/name` whose process is gone; return how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for leftover in folder.glob(f".{name}{PARTIAL_MARK}*"):
            if is_abandoned(leftover.name) and not _is_real_folder(leftover):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    removed += 1
    return removed


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
