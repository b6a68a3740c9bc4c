"""Errors of the domain layer. Every message is one sentence a shop owner can act on.

Every error says what happened as a `Category`; what a front door makes of it (the CLI's exit
code, an HTTP status) is decided by that front door alone, in `api/`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class Category(StrEnum):
    """What kind of failure an error is: the part of it a front door, a script or an event keeps."""

    NOT_FOUND = "not_found"
    """What was named does not exist: a repository, a snapshot, a job, a key file."""
    DAMAGED = "damaged"
    """Stored data failed its checks: a pack, a blob, the event log."""
    LOCKED = "locked"
    """Another live process holds what this one needs; it may be free later."""
    INVALID_INPUT = "invalid_input"
    """What was asked cannot be understood as given: a date, a path, an argument."""
    INVALID_SETTING = "invalid_setting"
    """A setting an admin gave cannot be taken: an unknown key, a value out of range, a bad cron."""
    UNAVAILABLE = "unavailable"
    """Something this needs cannot be reached or used now: a disk, a database, a worker process."""
    REFUSED = "refused"
    """Capsule will not do it: it would overwrite, cross sources, or read what it cannot trust."""
    UNKNOWN = "unknown"
    """Nothing says which: an error that is not Capsule's own (a bug, an operating-system error no
    adapter translated), or a failure recorded before events kept a category."""


class CapsuleError(Exception):
    """Raised when Capsule cannot do what was asked; the root of every error Capsule raises.

    Raised as itself, it says that a request cannot be carried out as given. Every subclass
    declares its own `category`; one that does not is refused when it is defined.
    """

    category: ClassVar[Category] = Category.INVALID_INPUT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("category"), Category):
            raise TypeError(
                f"{cls.__qualname__} must declare the category of what it reports, "
                "e.g. `category = Category.NOT_FOUND`; see domain/errors.py for the categories"
            )


class UnsafePath(CapsuleError):
    """Raised when a path from a user or a manifest would reach outside its root."""

    category = Category.REFUSED


class InvalidCommand(CapsuleError):
    """Raised when a command contradicts what a job's log has already recorded."""

    category = Category.REFUSED


class UnknownEvent(CapsuleError):
    """Raised when a stored event has a type or schema version this Capsule does not know."""

    category = Category.REFUSED


class InvalidEvent(CapsuleError):
    """Raised when a stored event does not fit its type or cannot follow the events before it."""

    category = Category.REFUSED
