"""The upcasters of Capsule's events: what brings a row written at an older schema version up to
the newest, on read (see `capsule.orchestrator.eventstore.upcasting`).

Apart from `codec`, which loads every domain event: `capsule status` reads the log through them
without loading those.
"""

from __future__ import annotations

from typing import Any

from capsule.domain.errors import Category
from capsule.orchestrator.eventstore.upcasting import Upcasters


def upcasters() -> Upcasters:
    """A new registry of every upcaster the log's older rows need, for `EventStore(upcasters=...)`.

    Register one per schema change, in version order: `registry.register(type, n, upcaster)`
    brings payloads of `type` from version n to n + 1.
    """
    registry = Upcasters()
    registry.register("RestoreRequested", 1, _restore_requested_v1_to_v2)
    registry.register("RestoreRequested", 2, _restore_requested_v2_to_v3)
    registry.register("RestoreRequested", 3, _restore_requested_v3_to_v4)
    registry.register("StepFailed", 1, _step_failed_v1_to_v2)
    return registry


def _restore_requested_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 2 added `include`; every restore before it took the whole snapshot.
    return {**data, "include": []}


def _restore_requested_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # Version 3 added `from_other_source` and `special_bits`. Before it, no restore was allowed to
    # cross sources, and none asked for special bits: a job resumed after an upgrade clears them, as
    # every restore now does unless asked.
    return {**data, "from_other_source": False, "special_bits": False}


def _restore_requested_v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    # Version 4 added `source`, the copy restored from; every restore before it read the local repository.
    return {**data, "source": None}


def _step_failed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 1 recorded the command line's code for the error, version 2 what kind of error it was:
    # 3 was damage and 4 a lock; 1 (also what a row older than the field meant) said only "failed".
    v1 = data.get("exit_code", 1)
    category = {3: Category.DAMAGED, 4: Category.LOCKED}.get(v1, Category.UNKNOWN)
    return {**{k: v for k, v in data.items() if k != "exit_code"}, "category": category.value}
