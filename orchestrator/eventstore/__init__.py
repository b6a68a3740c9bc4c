"""The append-only event log: the truth every projection, job and screen is derived from.

It stores type names, schema versions and JSON payloads; it knows no domain event class.

Its names load with the module that defines them, on first use: `upcasting` is read without
SQLAlchemy (by `capsule status`, see `capsule.orchestrator.reads`), the rest needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capsule.orchestrator.eventstore.audit import ChainReport, verify_chain
    from capsule.orchestrator.eventstore.chain import ChainKey, ChainKeyFile
    from capsule.orchestrator.eventstore.model import Handler, Metadata, NewEvent, StoredEvent
    from capsule.orchestrator.eventstore.schema import create_schema, events, metadata_obj
    from capsule.orchestrator.eventstore.store import EventStore
    from capsule.orchestrator.eventstore.upcasting import Upcaster, Upcasters

_HOMES = {
    "ChainReport": "audit",
    "verify_chain": "audit",
    "ChainKey": "chain",
    "ChainKeyFile": "chain",
    "Handler": "model",
    "Metadata": "model",
    "NewEvent": "model",
    "StoredEvent": "model",
    "create_schema": "schema",
    "events": "schema",
    "metadata_obj": "schema",
    "EventStore": "store",
    "Upcaster": "upcasting",
    "Upcasters": "upcasting",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ChainKey",
    "ChainKeyFile",
    "ChainReport",
    "EventStore",
    "Handler",
    "Metadata",
    "NewEvent",
    "StoredEvent",
    "Upcaster",
    "Upcasters",
    "create_schema",
    "events",
    "metadata_obj",
    "verify_chain",
]
