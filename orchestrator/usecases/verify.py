"""Use case: check the repository and every snapshot as a restore would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from capsule.adapters.repository.lock import locked
from capsule.adapters.repository.verify import VerifyReport, verify
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.source import open_source

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Verify:
    read_data: bool = False
    """Also decrypt and check every blob of every pack, and every image against its SHA-256."""
    source: str | None = None
    """A copy to check instead of the local repository: a destination's name or a folder's path."""


def verify_repository(settings: Settings, request: Verify, progress: Progress | None = None) -> VerifyReport:
    repo = open_source(settings, request.source)
    with locked(repo.backend, "verify", timeout=settings.lock_wait_seconds, reading=True):
        return verify(repo, read_data=request.read_data, progress=progress)
