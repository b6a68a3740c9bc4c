"""Fault points: named places where a test can have the process killed, to prove crash safety.

`CAPSULE_FAULTS` lists point names separated by commas. A process reaching a listed point kills
itself with SIGKILL, as a power cut or the kernel's OOM killer would: no cleanup, no exception
handler, no flushed buffer. `name@pause=S` pauses there for S seconds instead, so a test can hold a
step in place while it starts another; `name@until=PATH` pauses there until PATH exists (at most
UNTIL_LIMIT seconds), so the test lets the step go on the moment it has done what it meant to do
meanwhile. Without the variable, a point costs one lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "CAPSULE_FAULTS"
UNTIL_LIMIT = 600.0
UNTIL_POLL = 0.05


def armed() -> dict[str, float | Path | None]:
    """Armed points: None kills, a number pauses for that many seconds, a path pauses until it exists."""
    out: dict[str, float | Path | None] = {}
    for item in os.environ.get(ENV, "").split(","):
        name, _, action = item.strip().partition("@")
        if not name:
            continue
        kind, _, value = action.partition("=")
        if not action:
            out[name] = None
        elif kind == "pause" and _seconds(value) is not None:
            out[name] = _seconds(value)
        elif kind == "until" and value:
            out[name] = Path(value)
        else:
            # A hold that silently does not happen would let a test pass without what it relies on.
            raise ValueError(
                f"{ENV}: {item.strip()!r} is not a fault point of a known form: use name (kill), "
                "name@pause=SECONDS or name@until=PATH"
            )
    return out


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def point(name: str) -> None:
    """Die here, at once (or pause), if this point is armed."""
    points = armed()
    if name not in points:
        return
    action = points[name]
    if action is None:
        os.kill(os.getpid(), signal.SIGKILL)
    elif isinstance(action, Path):
        deadline = time.monotonic() + UNTIL_LIMIT
        while not action.exists() and time.monotonic() < deadline:
            time.sleep(UNTIL_POLL)
    else:
        time.sleep(action)
