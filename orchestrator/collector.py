"""The garbage collector while a command loads its modules: held back, then told to skip them.

Loading the modules creates objects that live as long as the process: classes, functions, the
models pydantic builds, SQLAlchemy's tables. With the collector's usual thresholds it runs hundreds
of times while they load, and each of its fuller passes walks all of them again, which is a good
share of a short job's processor time (see docs/performance.md, "Start-up: a job's process loads
its own steps, and the collector is held back"). So the `capsule` command holds the collector back
from its first line (`hold_back`), and a process that runs jobs, once its runtime is built and the
modules that run them are loaded (`modules_loaded`), freezes what exists (`gc.freeze`: the
collector never walks those objects again) and gives the usual thresholds back.

Holding back only raises the threshold of the youngest generation: a command that never says its
modules are loaded (a reading command, which ends soon) still collects, once that many objects
have piled up. A program that imports Capsule without the command (the tests, a script) never
called `hold_back`, and `modules_loaded` leaves its collector as it was.
"""

from __future__ import annotations

import gc

HELD_BACK = 300_000
"""Objects that may pile up before the collector runs while it is held back: more than a job's
process has made by the time its runtime is built, so that it never runs before."""

_usual: tuple[int, int, int] | None = None


def hold_back() -> None:
    """Let the modules load without the collector walking them again and again."""
    global _usual  # noqa: PLW0603 - one collector per process, as this state
    if _usual is None:
        _usual = gc.get_threshold()
    gc.set_threshold(HELD_BACK, *_usual[1:])


def modules_loaded() -> None:
    """Freeze what the modules made and collect as usual from now on; nothing unless held back."""
    global _usual  # noqa: PLW0603
    if _usual is None:
        return
    gc.freeze()
    gc.set_threshold(*_usual)
    _usual = None
