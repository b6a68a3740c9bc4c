"""Use case: repair the repository after damage, keeping what is intact and naming what was lost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capsule.adapters.errors import RepositoryReadOnly
from capsule.adapters.repository.backends import not_writable
from capsule.adapters.repository.lock import locked
from capsule.adapters.repository.repair import RepairReport, repair
from capsule.adapters.repository.setaside import SET_ASIDE
from capsule.orchestrator import faults
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Repair:
    dry_run: bool = False
    """Read everything and say what the repair would do; change nothing."""


@dataclass(frozen=True)
class Repaired:
    report: RepairReport
    set_aside: Path
    """Where the damaged packs and the snapshots set aside are kept."""


def repair_repository(settings: Settings, request: Repair, progress: Progress | None = None) -> Repaired:
    """Read every pack; set aside what is damaged and rebuild the index without it; replace or set
    aside each snapshot that lost data. Under an exclusive lock (a shared one for a dry run)."""
    repo = open_repository(settings)
    try:
        with locked(
            repo.backend,
            "repair",
            exclusive=not request.dry_run,
            timeout=settings.lock_wait_seconds,
            reading=request.dry_run,
        ):
            report = repair(repo, request.dry_run, progress, lambda name: faults.point(f"repair:{name}"))
    except RepositoryReadOnly as e:
        raise not_writable(repo.backend, e, "repair") from e
    return Repaired(report, settings.repository / SET_ASIDE)
