"""Safety copies: the live database as it was right before a restore replaced it, one per job.

A copy is first written under a pending name (`.<name>.partial`) and gets its own name
(`<stem>-before-restore-<job id><suffix>`) right before the live database is touched. So its name
says which state it holds: once it has one, the live database may already hold part or all of the
restore, and no later attempt of the job may save the live database over it. After a restore,
only the newest copies of the database are kept (CAPSULE_SAFETY_COPIES), the job's own always
among them.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

import structlog

from capsule.adapters.repository.backends.local import fsync_dir
from capsule.adapters.sqlite.snapshot import copy_database, remove_database_files
from capsule.orchestrator.settings import Settings

log = structlog.get_logger(__name__)

MARK = "-before-restore-"


def safety_path(settings: Settings, job_id: str) -> Path:
    """The safety copy of restore job `job_id`: one per job, whatever its attempts."""
    live = settings.database
    return settings.safety / f"{live.stem}{MARK}{job_id}{live.suffix}"


def pending_path(safety: Path) -> Path:
    return safety.with_name(f".{safety.name}.partial")


def save_pending(live: Path, safety: Path) -> None:
    """Copy the live database, as it is now, to the pending name of `safety`, durably."""
    pending = pending_path(safety)
    remove_database_files(pending)  # an earlier attempt's: older than the database is now
    safety.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy_database(live, pending)
    # The copy is all that is left of the sales the restore replaces: on disk before it counts.
    fd = os.open(pending, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def name_pending(safety: Path) -> None:
    """Give the pending copy its name: from now on the live database may change."""
    os.replace(pending_path(safety), safety)
    fsync_dir(safety.parent)


def remove_pending(safety: Path) -> None:
    """Drop a pending copy a job left when it ended before touching the live database."""
    remove_database_files(pending_path(safety))


def prune(settings: Settings, job_id: str) -> list[Path]:
    """Remove all but the newest `settings.safety_copies` safety copies of the database, never
    the one of `job_id`; return what was removed. A file that cannot be removed is left, logged."""
    own = safety_path(settings, job_id)
    live = settings.database
    pattern = f"{glob.escape(live.stem)}{MARK}*{glob.escape(live.suffix)}"
    others = [p for p in settings.safety.glob(pattern) if p.is_file() and p != own]
    others.sort(key=_age, reverse=True)
    removed = []
    for old in others[max(settings.safety_copies - 1, 0) :]:
        try:
            remove_database_files(old)
        except OSError as e:
            log.warning("could not remove an old safety copy", path=str(old), error=e.strerror)
            continue
        removed.append(old)
    if removed:
        log.info("old safety copies removed", count=len(removed), kept=settings.safety_copies)
    return removed


def _age(path: Path) -> tuple[int, str]:
    """When the copy was written, then its name (job ids sort by time)."""
    mtime = 0
    with contextlib.suppress(OSError):
        mtime = path.stat().st_mtime_ns
    return mtime, path.name
