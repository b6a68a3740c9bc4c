"""Use cases of the repository itself: create it, open it, remove stale locks, rebuild its index.

Each takes the repository lock it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from capsule.adapters.errors import RepositoryError, RepositoryReadOnly
from capsule.adapters.repository.backends import not_writable, open_backend
from capsule.adapters.repository.lock import is_stale, locked, read_locks
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import CapsuleError
from capsule.orchestrator.settings import Settings


def _passphrase(settings: Settings, given: str | None) -> str | None:
    if given:
        return given
    return settings.passphrase.get_secret_value() if settings.passphrase else None


def init_repository(settings: Settings, passphrase: str | None = None) -> Repository:
    backend = open_backend(settings.repository)
    try:
        return Repository.init(
            backend, settings.resolved_key_file, _passphrase(settings, passphrase), settings.pack_size
        )
    except RepositoryReadOnly as e:
        raise not_writable(backend, e, "init") from e


def repository_exists(settings: Settings) -> bool:
    return open_backend(settings.repository).exists("config", "config")


def open_repository(settings: Settings, passphrase: str | None = None) -> Repository:
    backend = open_backend(settings.repository)
    repo = Repository.open(backend, settings.resolved_key_file, _passphrase(settings, passphrase))
    repo.cache_dir = settings.cache
    return repo


@dataclass(frozen=True)
class CreateRepository:
    """Create the repository; `passphrase_file` also lets that passphrase open it; `exist_ok`
    succeeds without change if the repository exists and the key file opens it."""

    passphrase_file: Path | None = None
    exist_ok: bool = False


@dataclass(frozen=True)
class RepositoryCreated:
    repository: Path
    key_file: Path
    created: bool
    """False when `exist_ok` found the repository there and opened it with its key."""


def _read_passphrase(path: Path | None) -> str | None:
    if path is None:
        return None
    text = path.read_text().strip()
    if not text:
        raise CapsuleError(f"the passphrase file {path} is empty")
    return text


def create_repository(settings: Settings, request: CreateRepository) -> RepositoryCreated:
    if request.exist_ok and repository_exists(settings):
        open_repository(settings)
        return RepositoryCreated(settings.repository, settings.resolved_key_file, created=False)
    init_repository(settings, _read_passphrase(request.passphrase_file))
    return RepositoryCreated(settings.repository, settings.resolved_key_file, created=True)


@dataclass(frozen=True)
class IndexRebuilt:
    packs: int
    blobs: int
    unreadable: list[str]
    """Packs whose header cannot be read: their blobs are left unindexed."""


def rebuild_repository_index(settings: Settings) -> IndexRebuilt:
    """Rebuild the index files from the packs, under an exclusive lock."""
    from capsule.adapters.repository.rebuild import rebuild_index  # noqa: PLC0415 - numpy: not for every command

    repo = open_repository(settings)
    with locked(repo.backend, "rebuild-index", exclusive=True, timeout=settings.lock_wait_seconds):
        packs, blobs, unreadable = rebuild_index(repo)
    return IndexRebuilt(packs, blobs, unreadable)


@dataclass(frozen=True)
class Unlock:
    remove_all: bool = False
    """Remove live locks too (their host is gone), not only those of processes that died."""


@dataclass(frozen=True)
class Unlocked:
    removed: list[str]
    """A description of each lock removed."""
    interrupted: list[str] = field(default_factory=list)
    """Jobs whose process is gone, recorded as interrupted: none is left looking alive."""


def remove_locks(settings: Settings, request: Unlock) -> Unlocked:
    """Remove stale locks (or, with remove_all, every lock), and record as interrupted every job
    whose process is gone (with remove_all, also those of other hosts), so that none of them is
    left looking `running` until its lease runs out."""
    backend = open_backend(settings.repository)
    if not backend.exists("config", "config"):
        raise RepositoryError(f"there is no repository at {backend.describe()}")
    removed = []
    for info in read_locks(backend):
        if request.remove_all or is_stale(info):
            try:
                backend.remove("locks", info.name)
            except RepositoryReadOnly as e:
                raise not_writable(backend, e, "unlock") from e
            removed.append(info.describe())
    return Unlocked(removed, _interrupt_orphans(settings, hosts_gone=request.remove_all))


def _interrupt_orphans(settings: Settings, *, hosts_gone: bool) -> list[str]:
    from capsule.orchestrator.db import default_event_store_url  # noqa: PLC0415 - loads slowly
    from capsule.orchestrator.orphans import take_over_orphans  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime, person  # noqa: PLC0415

    local_log = default_event_store_url(settings.home).removeprefix("sqlite:///")
    if not settings.event_store_url and not Path(local_log).exists():
        return []  # no job was ever run here: no log to start
    runtime = Runtime(settings)
    try:
        return [t.describe() for t in take_over_orphans(runtime, hosts_gone=hosts_gone, actor=person())]
    finally:
        runtime.close()
