"""Fault points: named places where a test can have the process killed, to prove crash safety.

`CAPSULE_FAULTS` lists point names separated by commas. A process reaching a listed point kills
itself with SIGKILL, as a power cut or the kernel's OOM killer would: no cleanup, no exception
handler, no flushed buffer. `name@pause=S` pauses there for S seconds instead, so a test can hold a
step in place while it starts another. Without the variable, a point costs one lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "CAPSULE_FAULTS"


def armed() -> dict[str, float | None]:
    """Armed points: None kills, a number pauses for that many seconds."""
    out: dict[str, float | None] = {}
    for item in os.environ.get(ENV, "").split(","):
        name, _, action = item.strip().partition("@pause=")
        if name:
            out[name] = float(action) if action else None
    return out


def point(name: str) -> None:
    """Die here, at once (or pause), if this point is armed."""
    points = armed()
    if name not in points:
        return
    pause = points[name]
    if pause is None:
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        time.sleep(pause)
