"""Use cases the CLI (and later the job runner and the HTTP API) call: wiring settings to adapters.

Each one takes the repository lock it needs; nothing here knows about terminals or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from adapters.database_backup import BackupResult, backup_database
from adapters.errors import RepositoryError, RepositoryReadOnly
from adapters.repository.backend import LocalBackend
from adapters.repository.lock import is_stale, locked, read_locks
from adapters.repository.rebuild import rebuild_index
from adapters.repository.repo import Repository, UnreadableSnapshot
from adapters.restore import RestoredFile, restore_snapshot, write_entry
from adapters.source_identity import live_database_identity, this_host
from adapters.sqlite_snapshot import copy_database, copy_into_live
from adapters.verify import VerifyReport, verify
from domain.errors import CapsuleError, Category
from domain.manifest import Manifest, SnapshotKind, SourceIdentity
from domain.sources import SnapshotFilter, other_source, schema_changed
from orchestrator.settings import Settings

Progress = Callable[[int, int], None]


class SnapshotNotFound(CapsuleError):
    """Raised when a snapshot reference matches no snapshot, or more than one."""

    category = Category.NOT_FOUND


class OtherSource(CapsuleError):
    """Raised when an in-place restore would put a snapshot of another source in the live database."""

    category = Category.REFUSED


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


@dataclass(frozen=True)
class SnapshotListing:
    """The snapshots that pass a filter, oldest first, and every one that cannot be read."""

    snapshots: list[tuple[str, Manifest]]
    damaged: list[UnreadableSnapshot]


def list_snapshots(settings: Settings, only: SnapshotFilter | None = None) -> SnapshotListing:
    """Every snapshot that passes `only`; those that cannot be read are listed apart, whatever the filter
    (nothing can be said of their source, and damage must not go unseen)."""
    repo = open_repository(settings)
    readable, damaged = _scan(repo)
    chosen = [s for s in readable if only is None or only.matches(s[1])]
    return SnapshotListing(sorted(chosen, key=lambda s: (s[1].time, s[0])), damaged)


def _scan(repo: Repository) -> tuple[list[tuple[str, Manifest]], list[UnreadableSnapshot]]:
    readable: list[tuple[str, Manifest]] = []
    damaged: list[UnreadableSnapshot] = []
    for name, found in repo.scan_snapshots():
        if isinstance(found, Manifest):
            readable.append((name, found))
        else:
            damaged.append(found)
    return readable, damaged


def configured_sources(settings: Settings) -> dict[SnapshotKind, SourceIdentity]:
    """The sources Capsule is configured for, on this machine: what `latest-*` means by default."""
    return {
        "database": SourceIdentity(host=this_host(), path=str(settings.database.resolve())),
        "files": SourceIdentity(host=this_host(), path=str(settings.uploads.resolve())),
    }


def _is_configured(manifest: Manifest, sources: Mapping[SnapshotKind, SourceIdentity]) -> bool:
    configured, identity = sources.get(manifest.kind), manifest.source_identity()
    return configured is not None and (identity.host, identity.path) == (configured.host, configured.path)


LATEST_REFS = ("latest", "latest-database", "latest-files")
NAMED_SOURCES = 5  # other sources an error names; `capsule snapshots` lists every one


def resolve_snapshot(
    repo: Repository,
    ref: str,
    *,
    sources: Mapping[SnapshotKind, SourceIdentity] | None = None,
    only: SnapshotFilter | None = None,
) -> tuple[str, Manifest]:
    """`latest`, `latest-database`, `latest-files`, a full id or a unique prefix of one.

    `latest-*` is the newest readable snapshot of its kind that passes `only` and, unless `only`
    names a host or a path, whose source is the configured one (`sources`, per kind; None: any
    source). `only` does not apply to an id, which names its snapshot exactly (as in restic).
    """
    if ref in LATEST_REFS:
        return _latest(repo, ref, sources, only or SnapshotFilter())
    names = list(repo.backend.list("snapshots"))
    matches = [n for n in names if n.startswith(ref.lower())]
    if not matches or len(ref) < 4:
        raise SnapshotNotFound(
            f"no snapshot matches {ref!r}; `capsule snapshots` lists them (give at least 4 "
            "characters of an id, or `latest`)"
        )
    if len(matches) > 1:
        raise SnapshotNotFound(f"{ref!r} matches {len(matches)} snapshots; give more characters")
    return matches[0], repo.load_snapshot(matches[0])


def _latest(
    repo: Repository,
    ref: str,
    sources: Mapping[SnapshotKind, SourceIdentity] | None,
    only: SnapshotFilter,
) -> tuple[str, Manifest]:
    kind = ref.partition("-")[2] or None
    readable, damaged = _scan(repo)
    of_kind = [(n, m) for n, m in readable if kind is None or m.kind == kind]
    passing = [(n, m) for n, m in of_kind if only.matches(m)]
    chosen = passing
    if sources is not None and not only.chooses_source:
        chosen = [(n, m) for n, m in passing if _is_configured(m, sources)]
    if chosen:
        return max(chosen, key=lambda s: (s[1].time, s[0]))
    what = f"{kind} snapshots" if kind else "snapshots"
    skipped = f" ({len(damaged)} damaged snapshot(s) skipped; `capsule verify` names them)" if damaged else ""
    if not of_kind:
        hint = f" --kind {kind}" if kind else ""
        raise SnapshotNotFound(f"the repository has no {what} yet{skipped}; run `capsule backup{hint}`")
    if not passing:
        raise SnapshotNotFound(
            f"none of the {what} matches the --host, --path and --tag given{skipped}; "
            "`capsule snapshots` lists them with their sources"
        )
    # Only the configured sources can have left nothing of what passed.
    configured = sources or {}
    wanted = " or ".join(configured[k].describe() for k in configured if kind is None or k == kind)
    return _none_of_configured(what, wanted, passing, skipped)


def _none_of_configured(what: str, wanted: str, others: list[tuple[str, Manifest]], skipped: str) -> NoReturn:
    newest: dict[str, tuple[str, Manifest]] = {}
    for name, manifest in sorted(others, key=lambda s: (s[1].time, s[0])):
        newest[manifest.source_identity().describe()] = (name, manifest)
    shown = sorted(newest.items())[:NAMED_SOURCES]
    listed = "; ".join(f"{source} (newest {name[:12]})" for source, (name, _) in shown)
    if len(newest) > NAMED_SOURCES:
        listed += f"; and {len(newest) - NAMED_SOURCES} more (`capsule snapshots` lists them)"
    raise SnapshotNotFound(
        f"the repository has no {what} of {wanted}, the configured source{skipped}, only of other "
        f"sources: {listed}; choose one by its id, or with --host and --path"
    )


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
        sid, manifest = resolve_snapshot(repo, ref, sources=configured_sources(settings))
        return sid, restore_snapshot(
            repo,
            manifest,
            to,
            force=force,
            progress=progress,
            check_database=check_database,
            workers=settings.workers,
        )


def check_in_place_source(
    settings: Settings, sid: str, manifest: Manifest, *, from_other_source: bool = False
) -> list[str]:
    """Refuse to put a snapshot of another source into the live database unless the owner says it
    is meant; return what the owner should hear even so (the schema changed since the snapshot).

    Nothing is written: this runs before anything is staged.
    """
    live = live_database_identity(settings.database)
    snapshot = manifest.source_identity()
    reason = other_source(snapshot, live)
    notes = []
    if reason is not None:
        if not from_other_source:
            raise OtherSource(
                f"refusing to restore snapshot {sid[:12]} into {live.path}: {reason}; nothing was "
                "changed (restore it with --to DIR to look at it, or add --from-other-source if it "
                "is meant to replace this database)"
            )
        notes.append(f"snapshot {sid[:12]} is of another source, as --from-other-source allowed: {reason}")
    elif schema_changed(snapshot, live):
        notes.append(
            f"the schema of snapshot {sid[:12]} differs from the live database's: the shop's program "
            "may have been upgraded since it was taken; check that the program works with the restored data"
        )
    return notes


@dataclass(frozen=True)
class InPlaceResult:
    snapshot_id: str
    database: Path
    safety_copy: Path


def restore_in_place(
    settings: Settings, ref: str, *, from_other_source: bool = False, progress: Progress | None = None
) -> InPlaceResult:
    """Verify the snapshot into staging, save the live database aside, then copy in via SQLite."""
    repo = open_repository(settings)
    live = settings.database
    with locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True):
        sources = None if from_other_source else configured_sources(settings)
        sid, manifest = resolve_snapshot(repo, ref, sources=sources)
        if manifest.kind != "database":
            raise CapsuleError(f"snapshot {sid[:12]} holds files, not a database")
        check_in_place_source(settings, sid, manifest, from_other_source=from_other_source)
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
