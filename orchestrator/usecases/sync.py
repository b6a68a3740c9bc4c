"""Use case: copy the local repository to its destinations (`capsule sync`).

Each destination is listed (a Drive folder by one search that serves every kind, kept until the
log's copy below is written: `DriveBackend.one_listing`), and the event log's record of what it
holds (`backup_dest_objects`) reconciled with the listing: objects found there that the log did not
know are recorded (never Capsule's to delete), objects the log knew that are gone are recorded as
lost and sent again. Then it gets every object the local repository has and it lacks, in the order
that keeps it a complete repository at every instant (capsule.adapters.repository.copy), and loses
the objects Capsule sent there that a prune or a forget deleted locally (capsule.orchestrator.uploads,
the upload step of every backup, does the same without the listing). A second run sends nothing.

Safe to run twice, or beside a backup: the copy lists the snapshots before the packs they need. The
local repository is held by a shared lock, so a prune cannot remove a pack between its listing and
its copy; the key is not needed, as the objects travel sealed.

One destination that fails (a disk not mounted, Drive unreachable, consent revoked) is reported with
its error and its category; the others go on.

At the end, each destination that got its copy gets a copy of the event log too, sealed with the
repository key (capsule.orchestrator.usecases.logcopy): that one step needs the key.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.adapters.repository.backends.storage import Backend
    from capsule.orchestrator.runtime import Runtime

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
    deleted: int = 0
    """Objects deleted there: Capsule's own, which a prune or a forget deleted locally."""
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
    from capsule.orchestrator.runtime import Runtime, new_job_id  # noqa: PLC0415
    from capsule.orchestrator.usecases.logcopy import copy_log_after_sync  # noqa: PLC0415

    runtime = Runtime(settings)
    run_id = new_job_id()
    remotes: dict[str, Backend] = {}
    with ExitStack() as hold:  # each destination's backend, and its one listing, until the log's copy
        try:
            with locked(local, "sync", timeout=settings.lock_wait_seconds, reading=True):
                done = Synced(
                    [
                        _sync_one(settings, runtime, run_id, name, progress, hold=hold, remotes=remotes)
                        for name in names
                    ]
                )
        finally:
            runtime.close()
        return copy_log_after_sync(settings, done, remotes)


def _sync_one(
    settings: Settings,
    runtime: Runtime,
    run_id: str,
    name: str,
    progress: Progress | None,
    *,
    hold: ExitStack,
    remotes: dict[str, Backend],
) -> DestinationSynced:
    from capsule.orchestrator.runtime import person  # noqa: PLC0415
    from capsule.orchestrator.uploads import upload  # noqa: PLC0415

    outcome = upload(
        settings,
        runtime,
        name,
        run_id,
        actor=person(),
        now=runtime.clock(),
        progress=None if progress is None else lambda done, total: progress(name, done, total),
        list_first=True,
        paused_too=True,
        hold=hold,
    )
    if outcome.remote is not None:
        remotes[name] = outcome.remote
    if not outcome.ok:
        return DestinationSynced(name, ok=False, error=outcome.error, category=outcome.category)
    return DestinationSynced(
        name,
        ok=True,
        sent=outcome.sent,
        sent_bytes=outcome.sent_bytes,
        skipped=outcome.skipped,
        sent_by_kind=dict(outcome.sent_by_kind),
        deleted=outcome.deleted,
    )
