"""Errors of the domain layer. Every message is one sentence a shop owner can act on."""


class CapsuleError(Exception):
    """Raised when Capsule cannot do what was asked; the root of every error Capsule raises."""

    exit_code = 1


class UnsafePath(CapsuleError):
    """Raised when a path from a user or a manifest would reach outside its root."""


class InvalidCommand(CapsuleError):
    """Raised when a command contradicts what a job's log has already recorded."""


class UnknownEvent(CapsuleError):
    """Raised when a stored event has a type or schema version this Capsule does not know."""


class InvalidEvent(CapsuleError):
    """Raised when a stored event does not fit its type or cannot follow the events before it."""
