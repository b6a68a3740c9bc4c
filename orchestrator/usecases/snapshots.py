"""Use cases of snapshots: list them, resolve a reference (`latest-files`, an id prefix) to one,
browse one (`ls`) or all of them (`find`) for a file, and write one file of a snapshot out.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

from capsule.adapters.repository.repo import Repository, UnreadableSnapshot
from capsule.adapters.repository.setaside import set_aside_snapshots
from capsule.adapters.source_identity import this_host
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.manifest import Entry, Manifest, SnapshotKind, SourceIdentity
from capsule.domain.sources import SnapshotFilter
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.source import open_source


class SnapshotNotFound(CapsuleError):
    """Raised when a snapshot reference matches no snapshot, or more than one."""

    category = Category.NOT_FOUND


class PathNotFound(CapsuleError):
    """Raised when a path names nothing in a snapshot."""

    category = Category.NOT_FOUND


class SnapshotSetAside(CapsuleError):
    """Raised when a snapshot reference names a snapshot that a repair set aside."""

    category = Category.DAMAGED


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


def list_snapshots(
    settings: Settings, choice: ChooseSnapshots | None = None, source: str | None = None
) -> SnapshotListing:
    """Every snapshot that passes `choice`; those that cannot be read are listed apart, whatever the
    filter (nothing can be said of their source, and damage must not go unseen). `source` names a
    copy to list instead of the local repository (a destination, a folder's path)."""
    choice = choice or ChooseSnapshots()
    only = choice.snapshot_filter()
    repo = open_source(settings, source)
    readable, damaged = _scan(repo)
    damaged += [
        UnreadableSnapshot(s.name, SET_ASIDE_REASON + (REPLACED if s.manifest.kind == "files" else ""))
        for s in set_aside_snapshots(repo)
    ]
    chosen = [s for s in readable if only.matches(s[1])]
    listed = sorted(chosen, key=lambda s: (s[1].time, s[0]))
    return SnapshotListing(listed, damaged, configured_sources(settings)["database"].host, choice.given)


SET_ASIDE_REASON = (
    "set aside by `capsule repair`: data it needs was lost in a damaged pack, so it cannot be restored"
)
REPLACED = "; the files it had intact are in the snapshot that replaced it"


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
    if not matches and len(ref) >= 4:
        for aside in set_aside_snapshots(repo):
            if aside.name.startswith(ref.lower()):
                raise SnapshotSetAside(f"snapshot {aside.name[:12]} was {SET_ASIDE_REASON}")
    if not matches or len(ref) < 4:
        close = difflib.get_close_matches(ref.lower(), LATEST_REFS, n=1)
        meant = f"did you mean {close[0]!r}? " if close else ""
        raise SnapshotNotFound(
            f"no snapshot matches {ref!r}; {meant}`capsule snapshots` lists them (give at least 4 "
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
    source: str | None = None
    """The copy to read (`--from`: a destination's name or a folder's path); None: the local one."""


def read_file(settings: Settings, request: CatFile, output: Callable[[], BinaryIO]) -> None:
    """Write the file's bytes to the stream `output()` gives, called once the file's snapshot is
    found (so that nothing is opened for a reference that names none)."""
    from capsule.adapters.files.restore import cat_file  # noqa: PLC0415 - only this command needs it

    repo = open_source(settings, request.source)
    sid, manifest = resolve_snapshot(repo, request.snapshot, sources=configured_sources(settings))
    wanted = _relative(request.path, manifest)
    try:
        cat_file(repo, manifest, wanted, output())
    except CapsuleError as e:
        paths = [entry.path for entry in _entries(repo, manifest)]
        if wanted in paths:
            raise
        raise PathNotFound(_not_there(wanted, paths, sid, "cat")) from e


# ---- browsing: ls and find -----------------------------------------------------------------------


def _entries(repo: Repository, manifest: Manifest, under: str = "") -> Iterator[Entry]:
    """Every entry, or (`under` a path) those of the tree blobs that hold it and what is under it."""
    from capsule.adapters.files.tree import iter_entries, path_key  # noqa: PLC0415 - only browsing needs it
    from capsule.adapters.files.treesearch import TreeSearch  # noqa: PLC0415

    repo.ensure_index()
    if under:
        return TreeSearch(repo, manifest).entries_under([path_key(under)])
    return iter_entries(repo, manifest)


def _relative(path: str, manifest: Manifest) -> str:
    """A path as a snapshot names it: relative to its folder; the folder's own path typed in full
    before it (`/srv/uploads/shoes/red.jpg`) is understood too."""
    wanted = path.strip()
    if manifest.kind == "files" and wanted.startswith(manifest.source.rstrip("/") + "/"):
        wanted = wanted[len(manifest.source.rstrip("/")) + 1 :]
    wanted = wanted.strip("/")
    return "" if wanted == "." else wanted


SUGGESTED = 3  # paths an error names


def _not_there(wanted: str, paths: list[str], sid: str, command: str) -> str:
    """`there is no ...`, with the real paths closest to the one typed, or the folder to look in."""
    close = _close_paths(wanted, paths)
    text = f"there is no {wanted!r} in snapshot {sid[:12]}"
    if close:
        return text + "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    folder = wanted.rpartition("/")[0]
    while folder and folder not in paths:
        folder = folder.rpartition("/")[0]
    where = f" {folder}" if folder else ""
    tail = "; paths are relative to the snapshot's folder" if command == "cat" else ""
    name = wanted.rpartition("/")[2]
    return (
        text + f"{tail}; `capsule ls {sid[:12]}{where}` lists what is there, "
        f"`capsule find -i '*{name}*'` looks for the name in every folder and snapshot"
    )


def _close_paths(wanted: str, paths: list[str]) -> list[str]:
    """The paths a person most likely meant: the same name in another folder, else names close to
    it in the folder typed (or the folder closest to it).

    Names are compared within one folder, never across every path: difflib over 100,000 paths
    takes seconds, over a folder's names milliseconds.
    """
    folder, _, name = wanted.rpartition("/")
    same_name = [p for p in paths if p.rpartition("/")[2].lower() == name.lower() and p != wanted]
    if same_name:
        return same_name[:SUGGESTED]
    folders = {p.rpartition("/")[0] for p in paths}
    if folder not in folders:
        closest = difflib.get_close_matches(folder, sorted(folders), n=1)
        if not closest:
            return []
        folder = closest[0]
    names = [p.rpartition("/")[2] for p in paths if p.rpartition("/")[0] == folder]
    prefix = f"{folder}/" if folder else ""
    return [prefix + n for n in difflib.get_close_matches(name, names, n=SUGGESTED)]


@dataclass(frozen=True)
class ListFolder:
    """`capsule ls SNAPSHOT [PATH]`: a folder of a snapshot (its top by default), or one entry."""

    snapshot: str
    path: str = ""
    source: str | None = None
    """The copy to read (`--from`: a destination's name or a folder's path); None: the local one."""


@dataclass(frozen=True)
class FolderListing:
    snapshot_id: str
    manifest: Manifest
    path: str
    """The folder listed, relative to the snapshot's; "" for its top."""
    entries: list[Entry]
    """The folder's own items in name order; the one entry when PATH names a file or link."""


def list_folder(settings: Settings, request: ListFolder) -> FolderListing:
    repo = open_source(settings, request.source)
    sid, manifest = resolve_snapshot(repo, request.snapshot, sources=configured_sources(settings))
    wanted = _relative(request.path, manifest)
    children: list[Entry] = []
    itself: Entry | None = None
    for entry in _entries(repo, manifest, under=wanted):
        if entry.path == wanted:
            itself = entry
        elif entry.path.rpartition("/")[0] == wanted:
            children.append(entry)
    if itself is not None and itself.type != "dir":
        return FolderListing(sid, manifest, wanted, [itself])
    if wanted and itself is None:
        paths = [entry.path for entry in _entries(repo, manifest)]
        raise PathNotFound(_not_there(wanted, paths, sid, "ls"))
    return FolderListing(sid, manifest, wanted, sorted(children, key=lambda e: e.path))


@dataclass(frozen=True)
class FindFiles:
    """`capsule find PATTERN`: a glob on each item's path, or on its name when it has no `/`."""

    pattern: str
    snapshot: str | None = None
    """One snapshot to search (a reference as `restore` takes); None: every snapshot."""
    ignore_case: bool = False
    source: str | None = None
    """The copy to read (`--from`: a destination's name or a folder's path); None: the local one."""


@dataclass(frozen=True)
class FoundIn:
    snapshot_id: str
    manifest: Manifest
    entries: list[Entry]


@dataclass(frozen=True)
class FindResult:
    pattern: str
    found: list[FoundIn]
    """Snapshots with a match, newest first, each with its matching items in path order."""
    searched: int
    unreadable: list[str] = field(default_factory=list)
    """`id: reason` of the snapshots that could not be searched."""


def _matcher(request: FindFiles) -> Callable[[Entry], bool]:
    pattern = request.pattern.strip("/")
    if request.ignore_case:
        pattern = pattern.lower()
    on_path = "/" in pattern

    def matches(entry: Entry) -> bool:
        text = entry.path if on_path else entry.path.rpartition("/")[2]
        return fnmatch.fnmatchcase(text.lower() if request.ignore_case else text, pattern)

    return matches


def find_files(settings: Settings, request: FindFiles) -> FindResult:
    """Every item matching the pattern in every readable snapshot (or the one asked for), newest
    snapshot first. Groups of entries shared between snapshots (the tree blobs) are read once."""
    from capsule.adapters.files.tree import load_group, tree_ids  # noqa: PLC0415 - only find needs it

    repo = open_source(settings, request.source)
    if request.snapshot is not None:
        chosen = [resolve_snapshot(repo, request.snapshot, sources=configured_sources(settings))]
        unreadable: list[str] = []
    else:
        readable, damaged = _scan(repo)
        chosen = sorted(readable, key=lambda s: (s[1].time, s[0]), reverse=True)
        unreadable = [f"{d.name[:12]}: {d.reason}" for d in damaged]
    matches = _matcher(request)
    repo.ensure_index()
    seen: dict[bytes, list[Entry]] = {}
    found: list[FoundIn] = []
    for sid, manifest in chosen:
        try:
            hits = [e for e in manifest.entries if matches(e)]
            for tree_id in tree_ids(repo, manifest):
                if tree_id not in seen:
                    seen[tree_id] = [e for e in load_group(repo, tree_id) if matches(e)]
                hits += seen[tree_id]
        except CapsuleError as e:
            unreadable.append(f"{sid[:12]}: {e}")
            continue
        if hits:
            found.append(FoundIn(sid, manifest, hits))
    return FindResult(request.pattern, found, len(chosen), unreadable)
