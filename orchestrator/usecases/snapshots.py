"""Use cases of snapshots: list them, resolve a reference (`latest-files`, an id prefix) to one,
and write one file of a snapshot out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from capsule.adapters.repository.repo import Repository, UnreadableSnapshot
from capsule.adapters.source_identity import this_host
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.manifest import Manifest, SnapshotKind, SourceIdentity
from capsule.domain.sources import SnapshotFilter
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository


class SnapshotNotFound(CapsuleError):
    """Raised when a snapshot reference matches no snapshot, or more than one."""

    category = Category.NOT_FOUND


class AmbiguousSnapshot(CapsuleError):
    """Raised when `latest` would pick between the newest database and the newest images snapshot."""

    category = Category.INVALID_INPUT


@dataclass(frozen=True)
class ChooseSnapshots:
    """restic's `--host`, `--path` and `--tag`, as given: each repeatable, a tag value a
    comma-separated group."""

    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        return bool(self.hosts or self.paths or self.tags)

    def snapshot_filter(self) -> SnapshotFilter:
        # A path is compared as written (made absolute) and resolved: another machine's path may
        # not exist here, and this machine's may be reached through a link.
        spelled = [p for path in self.paths for p in (os.path.abspath(path), str(Path(path).resolve()))]
        return SnapshotFilter.of(self.hosts, spelled, self.tags)


@dataclass(frozen=True)
class SnapshotListing:
    """The snapshots that pass a filter, oldest first, and every one that cannot be read."""

    snapshots: list[tuple[str, Manifest]]
    damaged: list[UnreadableSnapshot]
    host: str
    """This machine: a snapshot of it is shown by its path alone."""
    filtered: bool
    """Whether --host, --path or --tag chose among the snapshots."""


def list_snapshots(settings: Settings, choice: ChooseSnapshots | None = None) -> SnapshotListing:
    """Every snapshot that passes `choice`; those that cannot be read are listed apart, whatever the
    filter (nothing can be said of their source, and damage must not go unseen)."""
    choice = choice or ChooseSnapshots()
    only = choice.snapshot_filter()
    repo = open_repository(settings)
    readable, damaged = _scan(repo)
    chosen = [s for s in readable if only.matches(s[1])]
    listed = sorted(chosen, key=lambda s: (s[1].time, s[0]))
    return SnapshotListing(listed, damaged, configured_sources(settings)["database"].host, choice.given)


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
    source). `latest` is the same without a kind, and refused (`AmbiguousSnapshot`) when snapshots
    of both kinds qualify: the newest images snapshot is rarely the one meant after a backup of
    `all`. `only` does not apply to an id, which names its snapshot exactly (as in restic).
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
        if kind is None:
            _refuse_both_kinds(chosen)
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


def _refuse_both_kinds(chosen: list[tuple[str, Manifest]]) -> None:
    newest: dict[SnapshotKind, str] = {}
    for name, manifest in sorted(chosen, key=lambda s: (s[1].time, s[0])):
        newest[manifest.kind] = name
    if len(newest) < 2:
        return
    raise AmbiguousSnapshot(
        f"`latest` could be the database's snapshot {newest['database'][:12]} or the images' "
        f"{newest['files'][:12]}; name one: `latest-database` or `latest-files` (or an id)"
    )


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


@dataclass(frozen=True)
class CatFile:
    """One file of a snapshot: `latest-files` (of the configured images folder), an id or a prefix."""

    snapshot: str
    path: str


def read_file(settings: Settings, request: CatFile, output: Callable[[], BinaryIO]) -> None:
    """Write the file's bytes to the stream `output()` gives, called once the file's snapshot is
    found (so that nothing is opened for a reference that names none)."""
    from capsule.adapters.files.restore import cat_file  # noqa: PLC0415 - only this command needs it

    repo = open_repository(settings)
    _, manifest = resolve_snapshot(repo, request.snapshot, sources=configured_sources(settings))
    cat_file(repo, manifest, request.path, output())
