"""What goes into the log and what comes out of it: plain JSON payloads, no domain classes.

A codec outside the store maps `type`, `schema_version` and `data` to domain events and back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its type name, the schema version of its payload, and the payload."""

    type: str
    schema_version: int
    data: dict[str, Any]

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("an event needs a type name")
        if self.schema_version < 1:
            raise ValueError(f"schema versions start at 1, not {self.schema_version}")


@dataclass(frozen=True, slots=True)
class Metadata:
    """Who caused an append and why: the actor, the request it belongs to, the message that led to it."""

    actor: str
    correlation_id: str
    causation_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"actor": self.actor, "correlation_id": self.correlation_id, "causation_id": self.causation_id}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Metadata:
        return cls(
            actor=raw["actor"], correlation_id=raw["correlation_id"], causation_id=raw.get("causation_id")
        )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event in the log: its global position, its place in its stream and when it was recorded.

    `schema_version` and `data` are those of the newest version of the type: events stored in an
    older shape are upcast on the way out, while the stored row keeps its original version.
    `recorded_at` is aware and in UTC.
    """

    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: Metadata
    recorded_at: datetime


Handler = Callable[[Connection, list[StoredEvent]], None]
"""An inline projection: runs in the append's transaction; if it raises, nothing is appended."""


def as_json_object(value: dict[str, Any], what: str) -> dict[str, Any]:
    """`value` as it will read back from the database, refused early if JSON cannot hold it."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must hold only what JSON can: {e}") from e
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
    return loaded
