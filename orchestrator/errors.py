"""Errors raised by the orchestrator. Driver errors stop here and become one of these."""

from __future__ import annotations

from capsule.domain.errors import CapsuleError, Category


class OrchestratorError(CapsuleError):
    """Raised when the orchestrator cannot run a command or a query; the root of its errors."""

    category = Category.UNAVAILABLE


class EventStoreError(OrchestratorError):
    """Raised when the event store cannot be read or written."""

    category = Category.UNAVAILABLE


class EventStoreUnavailable(EventStoreError):
    """Raised when the event store's database cannot be reached, opened or locked in time."""

    category = Category.UNAVAILABLE


class EventLogDamaged(EventStoreError):
    """Raised when the event log's database reports that its file or its data is damaged."""

    category = Category.DAMAGED

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class EventLogDiskFull(EventStoreUnavailable):
    """Raised when the event log cannot be written because the disk that holds it is full."""

    category = Category.UNAVAILABLE


class ConcurrencyConflict(EventStoreError):
    """Raised when a stream gained events after the version an append expected."""

    category = Category.REFUSED

    def __init__(self, stream_id: str, expected_version: int, actual_version: int | None) -> None:
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        now = "has more events" if actual_version is None else f"is at version {actual_version}"
        super().__init__(
            f"stream {stream_id!r} {now}, not {expected_version} as expected: "
            "another command changed it first; load the stream again and retry"
        )


class UnknownSchemaVersion(EventStoreError):
    """Raised when an event's schema version is not the newest one its upcasters lead to."""

    category = Category.REFUSED


class InvalidUpcaster(OrchestratorError):
    """Raised when an upcaster is registered twice for a version or leaves a gap in the chain."""

    category = Category.INVALID_INPUT


class EventLogKeyError(EventStoreError):
    """Raised when the key that seals the event log's chain is missing, unreadable or not the log's."""

    category = Category.REFUSED


class EventLogTampered(EventStoreError):
    """Raised when an event of the log does not match its seal or its place in the chain."""

    category = Category.DAMAGED

    def __init__(self, message: str, *, position: int, stream_id: str | None, type: str | None, problem: str):
        self.position = position
        self.stream_id = stream_id
        self.type = type
        self.problem = problem
        super().__init__(message)
