"""Repair: set aside what is damaged, keep what is intact, and say what each snapshot lost.

Every pack is read whole. A pack whose bytes no longer match its name, or whose header cannot be
opened, is damaged: each blob of it that still authenticates is stored again in a new pack, and the
pack itself is moved to the repository's `damaged/` area (copied there, then removed from `data/`:
nothing is deleted). The index is then rebuilt from the packs that remain, so that it names exactly
what can be read. A snapshot that needed a lost blob is named with what it lost:

- a files snapshot is replaced by one that keeps every intact file (same time, source and tags; its
  warnings list what was left out), and the old one is set aside;
- a database snapshot cannot be restored without its lost page: it is set aside and listed as
  damaged (`set_aside_snapshots`).

A manifest that fails authentication is set aside too. The order makes a crash harmless: intact
blobs are stored (and indexed) before their damaged pack leaves `data/`, new index files are written
before the old ones are removed, and a replacement snapshot is written before the snapshot it
replaces is set aside. A repair run again after a crash finishes the work.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from capsule.adapters.errors import IntegrityError
from capsule.adapters.files.tree import TreeWriter, load_group, tree_ids
from capsule.adapters.repository.backends.local import Kind
from capsule.adapters.repository.index import BlobLocation
from capsule.adapters.repository.pack import parse_header
from capsule.adapters.repository.rebuild import rebuild_index
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import content_ids
from capsule.adapters.repository.setaside import SET_ASIDE
from capsule.adapters.repository.verify import VerifyReport, _affected_by
from capsule.domain.errors import CapsuleError, UnsafePath
from capsule.domain.manifest import Entry, Manifest

log = structlog.get_logger(__name__)

LOST = "lost"
WARNINGS_KEPT = 100
"""Lost paths a replacement snapshot names in its warnings; its totals count them all."""

Progress = Callable[[int, int], None]
Checkpoint = Callable[[str], None]
"""Called with a name at each point where the repository is whole but the repair not done (a test
can have the process killed there); the names are in docs/architecture.md's table of fault points."""


def _nowhere(_name: str) -> None:
    pass


@dataclass(frozen=True)
class DamagedPack:
    name: str
    reason: str
    intact: int
    """Blobs of it that still authenticate: stored again in new packs."""
    lost: int


@dataclass
class SnapshotLoss:
    """One snapshot that needed a lost blob, and what became of it."""

    snapshot_id: str
    kind: str
    source: str
    time: datetime
    lost: list[str]
    """Paths of the files it lost (or `(the entries in tree blob …)` when their names are lost too)."""
    kept_files: int | None
    """Files a replacement keeps; None when nothing of the snapshot can be restored."""
    replaced_by: str | None = None
    """The replacement's id (None in a dry run, or when the snapshot cannot be kept)."""
    chunks: int | None = None
    """A database snapshot's chunks (pages stored together)."""
    lost_chunks: int | None = None
    """How many of them were lost (None if the list of them is lost too)."""


@dataclass
class RepairReport:
    dry_run: bool
    packs: int = 0
    bytes_read: int = 0
    damaged_packs: list[DamagedPack] = field(default_factory=list)
    missing_packs: list[str] = field(default_factory=list)
    damaged_index_files: list[str] = field(default_factory=list)
    unindexed_packs: list[str] = field(default_factory=list)
    """Sound packs no index names (an index file is lost, or a backup died): indexed again."""
    unreadable_snapshots: list[tuple[str, str]] = field(default_factory=list)
    """(id, why) of manifests that cannot be read: set aside."""
    snapshots: list[SnapshotLoss] = field(default_factory=list)
    indexed_packs: int | None = None
    indexed_blobs: int | None = None

    @property
    def salvaged_blobs(self) -> int:
        return sum(p.intact for p in self.damaged_packs)

    @property
    def changed(self) -> bool:
        """Whether the repair had (or, in a dry run, would have) anything to do."""
        return bool(
            self.damaged_packs
            or self.missing_packs
            or self.damaged_index_files
            or self.unindexed_packs
            or self.unreadable_snapshots
            or self.snapshots
        )


@dataclass
class _Inspected:
    reason: str
    intact: list[tuple[bytes, int, bytes]]  # (id, type, plaintext)
    lost: set[bytes]


def _inspect(
    repo: Repository, name: str, indexed: list[tuple[bytes, BlobLocation]], adoptable: set[bytes]
) -> tuple[int, _Inspected | None]:
    """(bytes read, None if the pack is sound, else what of it is intact and what is lost).

    The blobs of a sound pack that no index names (`indexed` empty) go to `adoptable`.
    """
    data = repo.backend.read("data", name)
    reason = ""
    if hashlib.sha256(data).hexdigest() != name:
        reason = "does not match its name"
    try:
        header = parse_header(repo.sealer, data, len(data), name)
    except CapsuleError as e:
        reason = reason or str(e)
        header = []
    if not reason:
        if not indexed:
            adoptable.update(b.blob_id for b in header)
        return len(data), None
    candidates = {b.blob_id: BlobLocation(name, *b[1:]) for b in header}
    for blob_id, loc in indexed:
        candidates.setdefault(blob_id, loc)
    found = _Inspected(reason, [], set())
    view = memoryview(data)
    for blob_id, loc in sorted(candidates.items(), key=lambda item: (item[1].offset, item[1].within)):
        try:
            plain = repo.open_blob(blob_id, loc, view[loc.offset : loc.offset + loc.length])
        except CapsuleError:
            found.lost.add(blob_id)
            continue
        found.intact.append((blob_id, loc.blob_type, plain))
    return len(data), found


def _move_aside(repo: Repository, kind: Kind, name: str, checkpoint: Checkpoint) -> None:
    """Copy a file into the set-aside area (written durably), then remove it from `kind`."""
    repo.backend.write(SET_ASIDE, name, repo.backend.read(kind, name))
    checkpoint("copied")
    repo.backend.remove(kind, name)


def repair(
    repo: Repository,
    dry_run: bool = False,
    progress: Progress | None = None,
    checkpoint: Checkpoint = _nowhere,
) -> RepairReport:
    """Repair the repository (see the module's description); with `dry_run`, only say what it would do.

    The caller holds an exclusive lock (a shared one for a dry run).
    """
    report = RepairReport(dry_run)
    report.damaged_index_files = repo.load_index(use_cache=False)
    on_disk = set(repo.backend.list("data"))
    total = len(on_disk)
    report.packs = total
    lost: set[bytes] = set()
    salvaged: set[bytes] = set()
    adoptable: set[bytes] = set()  # blobs of sound packs that no index names (an index file is lost)

    def check(name: str, indexed: list[tuple[bytes, BlobLocation]]) -> None:
        read, found = _inspect(repo, name, indexed, adoptable)
        report.bytes_read += read
        if progress:
            progress(total - len(on_disk), total)
        if found is None:
            return
        report.damaged_packs.append(DamagedPack(name, found.reason, len(found.intact), len(found.lost)))
        lost.update(found.lost)
        log.warning("damaged pack", pack=name[:12], intact=len(found.intact), lost=len(found.lost))
        if dry_run:
            return
        for blob_id, blob_type, plain in found.intact:
            if blob_id not in salvaged:
                salvaged.add(blob_id)
                repo.add(repo.prepare(blob_type, plain, blob_id), has_blob=lambda _: False)

    for name, indexed in repo.index.by_pack():
        if name not in on_disk:
            report.missing_packs.append(name)
            lost.update(blob_id for blob_id, _ in indexed)
            continue
        on_disk.discard(name)
        check(name, indexed)
    for name in sorted(on_disk):  # packs no index names: their header says what they hold
        on_disk.discard(name)
        before = len(adoptable)
        check(name, [])
        if len(adoptable) > before:
            report.unindexed_packs.append(name)
    damaged = {p.name for p in report.damaged_packs}

    if not dry_run:
        repo.flush()  # the intact blobs are in new packs, and indexed, before any pack leaves
        checkpoint("salvaged")
        for pack in report.damaged_packs:
            _move_aside(repo, "data", pack.name, checkpoint)
        if (
            report.damaged_packs
            or report.missing_packs
            or report.damaged_index_files
            or report.unindexed_packs
        ):
            report.indexed_packs, report.indexed_blobs, _ = rebuild_index(repo)
            repo.load_index(use_cache=False)
            repo.save_index_cache()
            checkpoint("indexed")

    gone = damaged | set(report.missing_packs)

    def lost_of(ids: list[bytes]) -> int:
        return sum(
            (loc is None and blob_id not in adoptable)
            or (loc is not None and blob_id in lost and loc.pack_id in gone and blob_id not in salvaged)
            for blob_id, loc in zip(ids, repo.index.locate_many(ids), strict=True)
        )

    _snapshots(repo, report, lost_of, checkpoint)
    return report


def _snapshots(
    repo: Repository, report: RepairReport, lost_of: Callable[[list[bytes]], int], checkpoint: Checkpoint
) -> None:
    def classify(ids: list[bytes]) -> set[str]:
        return {LOST} if lost_of(ids) else set()

    for name in sorted(repo.backend.list("snapshots")):
        try:
            repo.load_snapshot(name)
        except (IntegrityError, UnsafePath) as e:  # a newer Capsule's snapshot is left alone
            report.unreadable_snapshots.append((name, str(e)))
            if not report.dry_run:
                _move_aside(repo, "snapshots", name, checkpoint)
    hurt = _affected_by(repo, VerifyReport(), classify, count=False).get(LOST, set())
    by_snapshot: dict[str, list[str]] = {}
    for sid, path in hurt:
        by_snapshot.setdefault(sid, []).append(path)
    for sid, paths in sorted(by_snapshot.items()):
        manifest = repo.load_snapshot(sid)
        lost_paths = set(paths)
        kept = _kept_entries(repo, manifest, lost_paths) if manifest.kind == "files" else None
        loss = SnapshotLoss(
            sid,
            manifest.kind,
            manifest.source,
            manifest.time,
            sorted(paths),
            None if kept is None else sum(e.type == "file" for e in kept),
        )
        if manifest.kind == "database":
            loss.chunks = manifest.totals.blobs
            with contextlib.suppress(CapsuleError):  # else the list of its chunks is lost too
                loss.lost_chunks = sum(lost_of(ids) for e in manifest.entries for ids in content_ids(repo, e))
        if not report.dry_run:
            if kept is not None:
                loss.replaced_by = _replace(repo, sid, manifest, kept, loss.lost)
                checkpoint("replaced")
            _move_aside(repo, "snapshots", sid, checkpoint)
            log.warning(
                "snapshot lost data", snapshot=sid[:12], lost=len(paths), replaced_by=loss.replaced_by
            )
        report.snapshots.append(loss)


def _kept_entries(repo: Repository, manifest: Manifest, lost: set[str]) -> list[Entry] | None:
    """The entries of a files snapshot that lost nothing, in order; None if none can be read."""
    if not manifest.tree:
        return [e for e in manifest.entries if e.path not in lost]
    try:
        trees = tree_ids(repo, manifest)
    except CapsuleError:
        return None
    kept: list[Entry] = []
    for tree_id in trees:
        try:
            entries = load_group(repo, tree_id)
        except CapsuleError:
            continue  # its entries' names are lost with it: named by `lost` as the tree blob
        kept.extend(e for e in entries if e.path not in lost)
    return kept


def _replace(repo: Repository, sid: str, manifest: Manifest, kept: list[Entry], lost: list[str]) -> str:
    """Store a snapshot like `manifest` holding only `kept`; return its id."""
    tree: list[str] = []
    entries = kept
    if manifest.tree:
        writer = TreeWriter(repo)
        for entry in kept:
            writer.add(entry)
        tree, entries = writer.finish(), []
    repo.flush()
    note = f"its data was lost in a damaged pack; left out by `capsule repair` of snapshot {sid[:12]}"
    warnings = [*manifest.warnings, *(f"{path}: {note}" for path in lost[:WARNINGS_KEPT])]
    if len(lost) > WARNINGS_KEPT:
        warnings.append(f"... and {len(lost) - WARNINGS_KEPT} more paths: {note}")
    files = [e for e in kept if e.type == "file"]
    totals = manifest.totals.model_copy(
        update={
            "files": len(files),
            "bytes": sum(e.size for e in files),
            "warnings": manifest.totals.warnings + len(lost),
        }
    )
    replacement = manifest.model_copy(
        update={"tree": tree, "entries": entries, "warnings": warnings, "totals": totals}
    )
    # Tree and list blobs are named by their content: a repair interrupted after it wrote this
    # replacement built the same one, which is then kept rather than written twice.
    for name, existing in repo.snapshots():
        if existing == replacement:
            return name
    return repo.save_snapshot(replacement)
