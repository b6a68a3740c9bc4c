"""The append-only event log: the truth every projection, job and screen is derived from.

It stores type names, schema versions and JSON payloads; it knows no domain event class.
"""

from capsule.orchestrator.eventstore.audit import ChainReport, verify_chain
from capsule.orchestrator.eventstore.chain import ChainKey, ChainKeyFile
from capsule.orchestrator.eventstore.model import Handler, Metadata, NewEvent, StoredEvent
from capsule.orchestrator.eventstore.schema import create_schema, events, metadata_obj
from capsule.orchestrator.eventstore.store import EventStore
from capsule.orchestrator.eventstore.upcasting import Upcaster, Upcasters

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
