"""Use cases the CLI (and later the job runner and the HTTP API) call: wiring settings to adapters.

Each one takes the repository lock it needs; nothing here knows about terminals or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from adapters.database_backup import BackupResult, backup_database
from adapters.errors import RepositoryError, RepositoryReadOnly
from adapters.repository.backend import LocalBackend
from adapters.repository.lock import is_stale, locked, read_locks
from adapters.repository.rebuild import rebuild_index
from adapters.repository.repo import Repository
from adapters.restore import RestoredFile, restore_snapshot, write_entry
from adapters.sqlite_snapshot import copy_database, copy_into_live
from adapters.verify import VerifyReport, verify
from domain.errors import CapsuleError
from domain.manifest import Manifest
from orchestrator.settings import Settings

Progress = Callable[[int, int], None]


class SnapshotNotFound(CapsuleError):
    """Raised when a snapshot reference matches no snapshot, or more than one."""


def _passphrase(settings: Settings, given: str | None) -> str | None:
    if given:
        return given
    return settings.passphrase.get_secret_value() if settings.passphrase else None


def init_repository(settings: Settings, passphrase: str | None = None) -> Repository:
    backend = LocalBackend(settings.repository)
    try:
        return Repository.init(
            backend, settings.resolved_key_file, _passphrase(settings, passphrase), settings.pack_size
        )
    except RepositoryReadOnly as e:
        raise backend.not_writable(e, "init") from e


def repository_exists(settings: Settings) -> bool:
    return LocalBackend(settings.repository).exists("config", "config")


def open_repository(settings: Settings, passphrase: str | None = None) -> Repository:
    backend = LocalBackend(settings.repository)
    repo = Repository.open(backend, settings.resolved_key_file, _passphrase(settings, passphrase))
    repo.cache_dir = settings.cache
    return repo


def backup(
    settings: Settings,
    *,
    kind: str = "database",
    full: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> BackupResult:
    if kind != "database":
        raise CapsuleError(f"backup kind {kind!r} is not supported yet; use --kind database")
    repo = open_repository(settings)
    with locked(repo.backend, "backup", timeout=settings.lock_wait_seconds):
        return backup_database(
            repo,
            settings.database,
            settings.staging,
            full=full,
            now=now or datetime.now(UTC),
            progress=progress,
            workers=settings.workers,
            copy_in_memory=settings.copy_in_memory,
        )


def list_snapshots(settings: Settings) -> list[tuple[str, Manifest]]:
    repo = open_repository(settings)
    return sorted(repo.snapshots(), key=lambda s: (s[1].time, s[0]))


def resolve_snapshot(repo: Repository, ref: str) -> tuple[str, Manifest]:
    """`latest`, `latest-database`, `latest-files`, a full id or a unique prefix of one."""
    names = list(repo.backend.list("snapshots"))
    if ref in ("latest", "latest-database", "latest-files"):
        kind = ref.partition("-")[2] or None
        loaded = ((n, repo.load_snapshot(n)) for n in names)
        found = [(n, m) for n, m in loaded if kind is None or m.kind == kind]
        if not found:
            what = f"{kind} snapshots" if kind else "snapshots"
            hint = f" --kind {kind}" if kind else ""
            raise SnapshotNotFound(f"the repository has no {what} yet; run `capsule backup{hint}`")
        return max(found, key=lambda s: (s[1].time, s[0]))
    matches = [n for n in names if n.startswith(ref.lower())]
    if not matches or len(ref) < 4:
        raise SnapshotNotFound(
            f"no snapshot matches {ref!r}; `capsule snapshots` lists them (give at least 4 "
            "characters of an id, or `latest`)"
        )
    if len(matches) > 1:
        raise SnapshotNotFound(f"{ref!r} matches {len(matches)} snapshots; give more characters")
    return matches[0], repo.load_snapshot(matches[0])


def restore(
    settings: Settings,
    ref: str,
    to: Path,
    *,
    force: bool = False,
    check_database: bool = False,
    progress: Progress | None = None,
) -> tuple[str, list[RestoredFile]]:
    repo = open_repository(settings)
    with locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True):
        sid, manifest = resolve_snapshot(repo, ref)
        return sid, restore_snapshot(
            repo,
            manifest,
            to,
            force=force,
            progress=progress,
            check_database=check_database,
            workers=settings.workers,
        )


@dataclass(frozen=True)
class InPlaceResult:
    snapshot_id: str
    database: Path
    safety_copy: Path


def restore_in_place(settings: Settings, ref: str, *, progress: Progress | None = None) -> InPlaceResult:
    """Verify the snapshot into staging, save the live database aside, then copy in via SQLite."""
    repo = open_repository(settings)
    live = settings.database
    with locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True):
        sid, manifest = resolve_snapshot(repo, ref)
        if manifest.kind != "database":
            raise CapsuleError(f"snapshot {sid[:12]} holds files, not a database")
        repo.ensure_index()
        # The live database is about to be replaced: SQLite's own check is worth its time here.
        staged = write_entry(
            repo, manifest.entries[0], settings.staging / live.name, progress, check_database=True
        )
        try:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            safety = settings.safety / f"{live.stem}-before-restore-{stamp}{live.suffix}"
            copy_database(live, safety)
            copy_into_live(staged.path, live)
        finally:
            staged.path.unlink(missing_ok=True)
    return InPlaceResult(sid, live, safety)


def verify_repository(
    settings: Settings, *, read_data: bool = False, progress: Progress | None = None
) -> VerifyReport:
    repo = open_repository(settings)
    with locked(repo.backend, "verify", timeout=settings.lock_wait_seconds, reading=True):
        return verify(repo, read_data=read_data, progress=progress)


def rebuild_repository_index(settings: Settings) -> tuple[int, int, list[str]]:
    repo = open_repository(settings)
    with locked(repo.backend, "rebuild-index", exclusive=True, timeout=settings.lock_wait_seconds):
        return rebuild_index(repo)


def unlock(settings: Settings, remove_all: bool = False) -> list[str]:
    """Remove stale locks (or, with remove_all, every lock); describe each one removed."""
    backend = LocalBackend(settings.repository)
    if not backend.exists("config", "config"):
        raise RepositoryError(f"there is no repository at {settings.repository}")
    removed = []
    for info in read_locks(backend):
        if remove_all or is_stale(info):
            try:
                backend.remove("locks", info.name)
            except RepositoryReadOnly as e:
                raise backend.not_writable(e, "unlock") from e
            removed.append(info.describe())
    return removed
