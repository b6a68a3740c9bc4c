"""Temporary files a restore writes beside their targets: `.<name>.capsule-restore-<pid>-<random>`.

A file is written under such a name, checked, and only then renamed into place, so a target never
holds half a file. The writer's PID in the name tells whose it is: a process that exits on Ctrl-C
or SIGTERM removes its own, and a later restore removes those whose process is gone (killed, or
the machine lost power), without touching one a restore running beside it is still writing.

A process leaving on Ctrl-C or SIGTERM exits without waiting for the threads that write them, so
the temporary files this process makes are made under a guard and kept in a list:
`stop_partials` closes the guard and removes every one still there. A thread about to make one
after that waits for the exit instead, and none is made after the clean-up looked.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from capsule.adapters.repository.lock import pid_alive

PARTIAL_MARK = ".capsule-restore-"

T = TypeVar("T")

_guard = threading.Lock()
_stopped = False
_made: set[str] = set()  # this process's temporary files not yet renamed into place or removed


def partial_name(name: str) -> str:
    """A new temporary name for a file `name`, owned by this process."""
    return f".{name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def create_private(path: Path) -> int:
    """A new file at `path` open for writing, readable by this user only, never through a link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def make_partial(target: Path, make: Callable[[Path], T]) -> tuple[T, Path]:
    """Make a temporary file beside `target` with `make(path)` (which must create it, as `os.open`
    with O_CREAT | O_EXCL or `os.symlink` do); return what `make` returned and the path. Call
    `partial_done` once it is renamed into place or removed, to keep the list short (a name left
    in it after its file was renamed is harmless: it is not found at the exit). Once
    `stop_partials` ran (the process is exiting), this waits for the exit and makes nothing."""
    tmp = target.parent / partial_name(target.name)
    with _guard:
        if not _stopped:
            made = make(tmp)
            _made.add(str(tmp))
            return made, tmp
    threading.Event().wait()  # the process is leaving: never return
    raise AssertionError("unreachable")  # pragma: no cover


def partial_done(tmp: Path) -> None:
    """`tmp`, made by `make_partial`, was renamed into place or removed."""
    with _guard:
        _made.discard(str(tmp))


def stop_partials() -> int:
    """For a process about to exit without waiting for its threads: make no temporary file from
    now on, and remove those this process made that are still there; return how many. Never fails."""
    global _stopped  # noqa: PLW0603 - one guard for the whole process
    with _guard:
        _stopped = True
        made = list(_made)
        _made.clear()
    removed = 0
    for name in made:
        with contextlib.suppress(OSError):
            os.unlink(name)
            removed += 1
    return removed


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
