"""The collector held back while a command loads its modules, and given back once a job's are loaded."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from capsule.orchestrator import collector


@pytest.fixture
def usual_collector() -> Iterator[tuple[int, int, int]]:
    """This process's thresholds, put back afterwards, with nothing frozen by the test left frozen."""
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    yield before
    collector._usual = None
    gc.set_threshold(*before)
    if gc.get_freeze_count() > frozen:
        gc.unfreeze()


def test_held_back_the_youngest_generation_waits_for_many_more_objects(
    usual_collector: tuple[int, int, int],
) -> None:
    collector.hold_back()
    assert gc.get_threshold() == (collector.HELD_BACK, *usual_collector[1:])


def test_once_the_modules_are_loaded_their_objects_are_frozen_and_the_usual_thresholds_return(
    usual_collector: tuple[int, int, int],
) -> None:
    collector.hold_back()
    kept = [[] for _ in range(1000)]  # objects made while held back, as a module's are
    collector.modules_loaded()
    assert gc.get_threshold() == usual_collector
    assert gc.get_freeze_count() >= len(kept)
    walked = {id(o) for o in gc.get_objects()}  # what a collection may walk: frozen objects are not
    assert not any(id(k) in walked for k in kept)


def test_without_the_command_loading_modules_changes_nothing(usual_collector: tuple[int, int, int]) -> None:
    frozen = gc.get_freeze_count()
    collector.modules_loaded()
    assert gc.get_threshold() == usual_collector
    assert gc.get_freeze_count() == frozen


def test_holding_back_twice_still_gives_back_the_thresholds_from_before(
    usual_collector: tuple[int, int, int],
) -> None:
    collector.hold_back()
    collector.hold_back()
    collector.modules_loaded()
    assert gc.get_threshold() == usual_collector
