"""Upcasters bring old payloads up to the newest schema version, one registered step at a time."""

from __future__ import annotations

from typing import Any

import pytest

from capsule.domain.errors import Category
from capsule.domain.events import RestoreRequested, StepFailed, load_event
from capsule.orchestrator import codec
from capsule.orchestrator.errors import InvalidUpcaster, UnknownSchemaVersion
from capsule.orchestrator.eventstore import Upcasters


def add_unit(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "unit": "bytes"}


def rename_size(data: dict[str, Any]) -> dict[str, Any]:
    return {"length": data["size"], "unit": data["unit"]}


@pytest.fixture
def upcasters() -> Upcasters:
    registry = Upcasters()
    registry.register("PackUploaded", 1, add_unit)
    registry.register("PackUploaded", 2, rename_size)
    return registry


def test_a_type_without_upcasters_is_at_version_1():
    registry = Upcasters()
    assert registry.latest("BackupRequested") == 1
    assert registry.upcast("BackupRequested", 1, {"kind": "database"}) == {"kind": "database"}


def test_upcasts_from_any_old_version_to_the_newest(upcasters: Upcasters):
    assert upcasters.latest("PackUploaded") == 3
    assert upcasters.upcast("PackUploaded", 1, {"size": 7}) == {"length": 7, "unit": "bytes"}
    assert upcasters.upcast("PackUploaded", 2, {"size": 7, "unit": "KiB"}) == {"length": 7, "unit": "KiB"}
    assert upcasters.upcast("PackUploaded", 3, {"length": 7, "unit": "B"}) == {"length": 7, "unit": "B"}


def test_registering_a_version_twice_raises(upcasters: Upcasters):
    with pytest.raises(InvalidUpcaster, match="already has an upcaster from schema version 2"):
        upcasters.register("PackUploaded", 2, rename_size)


def test_registering_with_a_gap_raises(upcasters: Upcasters):
    with pytest.raises(InvalidUpcaster, match="must start from version 3, not 4"):
        upcasters.register("PackUploaded", 4, rename_size)
    with pytest.raises(InvalidUpcaster, match="must start from version 1, not 2"):
        Upcasters().register("SnapshotTaken", 2, add_unit)
    assert upcasters.latest("PackUploaded") == 3


@pytest.mark.parametrize("version", [0, 4])
def test_a_version_outside_the_chain_raises(upcasters: Upcasters, version: int):
    with pytest.raises(UnknownSchemaVersion, match="knows versions 1 to 3"):
        upcasters.upcast("PackUploaded", version, {})


def test_a_restore_requested_at_version_1_restores_everything():
    registry = codec.upcasters()
    v1 = {"job_id": "r1", "snapshot_id": "abc", "target": "/srv/out", "force": True, "check": False}
    data = registry.upcast("RestoreRequested", 1, {**v1, "plan": ["restore"]})
    assert registry.latest("RestoreRequested") == RestoreRequested.schema_version == 4
    added = {"include": [], "from_other_source": False, "special_bits": False, "source": None}
    assert data == {**v1, "plan": ["restore"], **added}
    event = load_event("RestoreRequested", data, schema_version=4)
    assert isinstance(event, RestoreRequested)
    assert (event.include, event.force) == ((), True)
    assert (event.from_other_source, event.special_bits) == (False, False)


def test_a_restore_requested_at_version_2_never_crosses_sources():
    registry = codec.upcasters()
    v2 = {"job_id": "r2", "snapshot_id": "abc", "target": "in-place", "force": False, "check": True}
    v2 |= {"include": [], "plan": ["stage", "apply"]}
    data = registry.upcast("RestoreRequested", 2, v2)
    event = load_event("RestoreRequested", data, schema_version=4)
    assert isinstance(event, RestoreRequested)
    assert event.from_other_source is False


def test_a_restore_requested_at_version_2_clears_the_special_bits():
    registry = codec.upcasters()
    v2 = {"job_id": "r1", "snapshot_id": "abc", "target": "/srv/out", "force": False, "check": False}
    v2 |= {"include": ["shoes/*"], "plan": ["restore"]}
    data = registry.upcast("RestoreRequested", 2, v2)
    assert data == {**v2, "from_other_source": False, "special_bits": False, "source": None}
    event = load_event("RestoreRequested", data, schema_version=4)
    assert isinstance(event, RestoreRequested)
    assert (event.include, event.special_bits) == (("shoes/*",), False)


def test_a_restore_requested_at_version_3_read_the_local_repository():
    registry = codec.upcasters()
    v3 = {"job_id": "r3", "snapshot_id": "abc", "target": "/srv/out", "force": False, "check": False}
    v3 |= {"include": [], "from_other_source": False, "special_bits": False, "plan": ["restore"]}
    event = load_event("RestoreRequested", registry.upcast("RestoreRequested", 3, v3), schema_version=4)
    assert isinstance(event, RestoreRequested)
    assert event.source is None


@pytest.mark.parametrize(
    ("recorded", "category"),
    [
        ({}, Category.UNKNOWN),  # written before the exit code was recorded
        ({"exit_code": 1}, Category.UNKNOWN),
        ({"exit_code": 3}, Category.DAMAGED),
        ({"exit_code": 4}, Category.LOCKED),
    ],
)
def test_a_step_failed_at_version_1_reads_back_with_the_category_of_its_exit_code(
    recorded: dict[str, Any], category: Category
):
    registry = codec.upcasters()
    v1 = {"job_id": "b1", "step": "store", "attempt": 2, "error": "locked", "transient": True}
    v1 |= {"retry_at": "2026-11-25T14:30:00Z", **recorded}
    data = registry.upcast("StepFailed", 1, v1)
    assert registry.latest("StepFailed") == StepFailed.schema_version == 2
    event = load_event("StepFailed", data, schema_version=2)
    assert isinstance(event, StepFailed)
    assert event.category is category
    assert (event.step, event.attempt, event.error, event.transient) == ("store", 2, "locked", True)
