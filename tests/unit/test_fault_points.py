"""Fault points held until a file exists go on as soon as it does, and only then."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from capsule.orchestrator import faults


def test_a_point_held_until_a_file_exists_goes_on_once_it_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    monkeypatch.setenv(faults.ENV, f"other:point, store:locked@until={release}")
    assert faults.armed() == {"other:point": None, "store:locked": release}
    timer = threading.Timer(0.5, release.touch)
    started = time.monotonic()
    timer.start()
    try:
        faults.point("store:locked")
    finally:
        timer.cancel()
    assert time.monotonic() - started >= 0.5
    assert release.exists()


def test_pauses_and_kills_are_read_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "a:started,b:done@pause=2.5")
    assert faults.armed() == {"a:started": None, "b:done": 2.5}


@pytest.mark.parametrize(
    "item", ["a:started@pasue=2", "a:started@pause", "a:started@pause=soon", "a:started@until="]
)
def test_a_mistyped_action_is_refused_not_left_unarmed(item: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A test holding a step with a mistyped action would otherwise run without the hold it relies on.
    monkeypatch.setenv(faults.ENV, item)
    with pytest.raises(ValueError, match=r"CAPSULE_FAULTS: .*a:started.*name@pause=SECONDS"):
        faults.armed()
