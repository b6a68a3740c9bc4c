"""Upcasters bring an old payload up to the newest schema version of its type, on read.

Stored rows are never rewritten: an event keeps the schema version it was written with, and every
read runs it through the chain `from_version -> from_version + 1 -> ... -> latest`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capsule.orchestrator.errors import InvalidUpcaster, UnknownSchemaVersion

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Brings one payload from schema version n to n + 1; it may change and return its argument."""


class Upcasters:
    """A registry of upcasters per event type. Every type starts at schema version 1.

    Register them in order: the first for a type goes from version 1, the next from version 2,
    and so on; a duplicate or a gap raises `InvalidUpcaster`.
    """

    def __init__(self) -> None:
        self._chains: dict[str, list[Upcaster]] = {}

    def register(self, type: str, from_version: int, upcaster: Upcaster) -> None:
        """Add the step that brings `type` payloads from `from_version` to `from_version + 1`."""
        latest = self.latest(type)
        if from_version < latest:
            raise InvalidUpcaster(
                f"event type {type!r} already has an upcaster from schema version {from_version}"
            )
        if from_version > latest:
            raise InvalidUpcaster(
                f"event type {type!r} has upcasters up to version {latest}, so the next one must start "
                f"from version {latest}, not {from_version}"
            )
        self._chains.setdefault(type, []).append(upcaster)

    def latest(self, type: str) -> int:
        """The newest schema version of `type`: 1 plus the number of upcasters registered for it."""
        return len(self._chains.get(type, ())) + 1

    def upcast(self, type: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
        """`data`, stored at `schema_version`, in the shape of the newest version of `type`."""
        chain = self._chains.get(type, [])
        latest = len(chain) + 1
        if not 1 <= schema_version <= latest:
            raise UnknownSchemaVersion(
                f"an event of type {type!r} has schema version {schema_version}, but this Capsule knows "
                f"versions 1 to {latest}; it was written by a newer Capsule: upgrade this one"
            )
        for step in chain[schema_version - 1 :]:
            data = step(data)
        return data
