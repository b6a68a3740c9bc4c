"""Use case: copy the local repository to its destinations (`capsule sync`).

Each destination gets every object the local repository has and it lacks, in the order that keeps
it a complete repository at every instant (capsule.adapters.repository.copy). A second run sends
nothing. Nothing is ever deleted on a destination: objects pruned locally stay there until prune
learns to reach destinations.

Safe to run twice, or beside a backup: the copy skips what the destination lists, and lists the
snapshots before the packs they need. The local repository is held by a shared lock, so a prune
cannot remove a pack between its listing and its copy; the key is not needed, as the objects travel
sealed.

One destination that fails (a disk not mounted, Drive unreachable, consent revoked) is reported with
its error and its category; the others go on.

At the end, each destination that got its copy gets a copy of the event log too, sealed with the
repository key (capsule.orchestrator.usecases.logcopy): that one step needs the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capsule.adapters.errors import DestinationNeedsConsent
from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.adapters.repository.backends import Backend

Progress = Callable[[str, int, int], None]


class NoDestination(CapsuleError):
    """Raised when `capsule sync` has no enabled destination to copy to."""

    category = Category.INVALID_INPUT


@dataclass(frozen=True)
class Sync:
    """Copy to `destination`, or to every enabled destination when None."""

    destination: str | None = None


@dataclass(frozen=True)
class DestinationSynced:
    """What one destination got: objects and bytes sent, objects it already had, or its error."""

    name: str
    ok: bool
    sent: int = 0
    sent_bytes: int = 0
    skipped: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    category: Category | None = None
    event_log: str | None = None
    """The generation of the event log's copy there (capsule.orchestrator.usecases.logcopy)."""
    event_log_written: bool = False


@dataclass(frozen=True)
class Synced:
    destinations: list[DestinationSynced]

    @property
    def failed(self) -> list[DestinationSynced]:
        return [d for d in self.destinations if not d.ok]


def sync(settings: Settings, request: Sync, progress: Progress | None = None) -> Synced:
    """Copy the local repository to the destination named, or to every enabled one."""
    from capsule.adapters.errors import RepositoryNotFound  # noqa: PLC0415 - the repository loads slowly
    from capsule.adapters.repository.backends import open_backend  # noqa: PLC0415
    from capsule.adapters.repository.lock import locked  # noqa: PLC0415
    from capsule.orchestrator.destinations import load  # noqa: PLC0415

    local = open_backend(settings.repository)
    if not local.exists("config", "config"):
        raise RepositoryNotFound(
            f"there is no repository at {local.describe()} to copy: create it with `capsule init` and back "
            "up first, or set CAPSULE_REPOSITORY to where it is"
        )
    known = load(settings)
    if request.destination is not None:
        names = [known.get(request.destination).name]  # UnknownDestination lists the others
    else:
        names = [n for n in known.names if known.get(n).enabled]
        if not names:
            raise NoDestination(
                "there is no enabled destination to copy to: add one with `capsule destinations add folder "
                "NAME PATH` (or `add gdrive`), or enable one with `capsule destinations enable NAME`"
            )
    with locked(local, "sync", timeout=settings.lock_wait_seconds, reading=True):
        done = Synced([_sync_one(settings, local, name, progress) for name in names])
    from capsule.orchestrator.usecases.logcopy import copy_log_after_sync  # noqa: PLC0415

    return copy_log_after_sync(settings, done)


def _sync_one(settings: Settings, local: Backend, name: str, progress: Progress | None) -> DestinationSynced:
    from capsule.adapters.repository.copy import copy_repository  # noqa: PLC0415
    from capsule.orchestrator.destinations import open_destination  # noqa: PLC0415

    try:
        destination = open_destination(settings, name)
        counts = copy_repository(
            local,
            destination,
            progress=None if progress is None else lambda done, total: progress(name, done, total),
        )
    except CapsuleError as e:
        if isinstance(e, DestinationNeedsConsent):  # status and alerts say so until it is renewed
            from capsule.orchestrator.usecases.destinations import (  # noqa: PLC0415
                consent_reason,
                record_consent_needed,
            )

            record_consent_needed(settings, name, consent_reason(e))
        return DestinationSynced(name, ok=False, error=str(e), category=e.category)
    return DestinationSynced(
        name,
        ok=True,
        sent=counts.sent,
        sent_bytes=counts.sent_bytes,
        skipped=counts.skipped,
        sent_by_kind=dict(counts.by_kind),
    )
