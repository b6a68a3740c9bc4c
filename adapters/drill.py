"""Restore drills on the machine's side: restore the newest snapshots into a scratch folder, check
what came back, and delete it.

Nothing here opens the live database or writes to the repository. The copies go to a scratch
folder of their own, `<home>/drills/<job id>-<pid>-<random>`, private (0700) whatever the umask,
which `scratch_folder` deletes when its block ends, however it ends. The PID in its name lets the
next drill remove the folder of a process that was killed, and leave alone one that a drill
running beside it still uses.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from capsule.adapters.filedigest import sha256_file
from capsule.adapters.files.restore import write_file
from capsule.adapters.files.tree import iter_entries
from capsule.adapters.repository.entry_rules import check_database_snapshot
from capsule.adapters.repository.lock import pid_alive
from capsule.adapters.repository.repo import Repository, UnreadableSnapshot
from capsule.adapters.repository.restore import write_entry
from capsule.adapters.sqlite.snapshot import check_database
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.manifest import Manifest, SnapshotKind

log = structlog.get_logger(__name__)

SCRATCH = "drills"
COPY_NAME = "drill-copy.db"
"""The restored database's name in the scratch folder: never the live database's own."""
FOREIGN_KEY_ROWS_SHOWN = 5

Progress = Callable[[int, int], None]


class NothingToProve(CapsuleError):
    """Raised when a drill finds no snapshot of a kind to prove restorable."""

    category = Category.NOT_FOUND


class DrillFoundDamage(CapsuleError):
    """Raised when a drill finds that a snapshot does not restore whole, or restores damaged."""

    category = Category.DAMAGED


class ScratchRefused(CapsuleError):
    """Raised when a drill's scratch folder would lie beside the live database."""

    category = Category.REFUSED


@dataclass(frozen=True)
class CopyChecked:
    """What SQLite said of a restored database: `integrity_check` is `ok` by the time this exists."""

    integrity_check: str
    foreign_key_check: str
    """`ok`, or how many rows break a foreign key."""
    foreign_key_count: int
    foreign_key_rows: list[str]
    """The first few rows that do, as `table row N -> parent`."""


@dataclass(frozen=True)
class ImagesChecked:
    images_total: int
    images_sampled: int
    images_checked: int
    bytes: int


# ---- the snapshot to prove ----------------------------------------------------------------------


def newest_snapshot(repo: Repository, kind: SnapshotKind, host: str, path: str) -> tuple[str, Manifest]:
    """The newest snapshot of `kind` taken of `path` on `host`.

    A snapshot whose manifest cannot be read fails the drill: it may be the newest one, and a drill
    that quietly proved an older snapshot would tell the owner something untrue.
    """
    readable: list[tuple[str, Manifest]] = []
    unreadable: list[UnreadableSnapshot] = []
    for name, found in repo.scan_snapshots():
        if isinstance(found, Manifest):
            readable.append((name, found))
        else:
            unreadable.append(found)
    if unreadable:
        first = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DrillFoundDamage(
            f"snapshot {first.name[:12]}{more} cannot be read: {first.reason}; it may be the newest "
            "one, so nothing is proven: run `capsule verify`, then `capsule repair`"
        )
    mine = [
        (name, manifest)
        for name, manifest in readable
        if manifest.kind == kind
        and (manifest.source_identity().host, manifest.source_identity().path) == (host, path)
    ]
    if not mine:
        what = "database" if kind == "database" else "images"
        hint = "capsule backup" if kind == "database" else "capsule backup --kind files"
        raise NothingToProve(
            f"there is no {what} snapshot of {path} yet, so the drill has nothing to prove; "
            f"run `{hint}` first"
        )
    return max(mine, key=lambda s: (s[1].time, s[0]))


# ---- the scratch folder -------------------------------------------------------------------------


def scratch_root(home: Path) -> Path:
    return home / SCRATCH


def _owner(name: str) -> int | None:
    """The PID in a scratch folder's name, `<job id>-<pid>-<random>`; None if it has none."""
    parts = name.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def remove_abandoned(root: Path) -> list[str]:
    """Delete the scratch folders under `root` whose process is gone from this host; their names."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for folder in root.iterdir():
            pid = _owner(folder.name)
            if pid is None or pid_alive(pid) or not folder.is_dir() or folder.is_symlink():
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.info("removed what killed drills left behind", folders=removed)
    return removed


def remove_own_scratch(home: Path) -> None:
    """Delete this process's scratch folders, for a process about to exit without unwinding."""
    with contextlib.suppress(FileNotFoundError):
        for folder in scratch_root(home).iterdir():
            if _owner(folder.name) == os.getpid() and folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_folder(home: Path, job_id: str, live_database: Path) -> Iterator[Path]:
    """A new private folder for one drill step's copies, deleted when the block ends."""
    root = scratch_root(home).resolve()
    live = live_database.resolve()
    if live.parent == root or root in live.parents:
        raise ScratchRefused(
            f"the drills' scratch folder {root} would hold the live database {live}; "
            "set CAPSULE_HOME to a folder of Capsule's own"
        )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    remove_abandoned(root)
    folder = root / f"{job_id}-{os.getpid()}-{secrets.token_hex(3)}"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- the database -------------------------------------------------------------------------------


def restore_database_copy(
    repo: Repository, snapshot_id: str, manifest: Manifest, folder: Path, progress: Progress | None = None
) -> Path:
    """Restore a database snapshot into `folder`, verified as a restore is (every blob
    authenticated, the file's SHA-256, SQLite's quick check); return the copy's path."""
    where = f"database snapshot {snapshot_id[:12]}"
    try:
        check_database_snapshot(manifest)
        repo.ensure_index()
        target = folder / COPY_NAME
        written = write_entry(repo, manifest.entries[0], target, progress, check_database=True, mode=0o600)
        os.replace(written.path, target)
    except CapsuleError as e:
        if e.category not in (Category.DAMAGED, Category.NOT_FOUND):
            raise
        raise DrillFoundDamage(f"{where} does not restore: {e}") from e
    return target


def check_database_copy(snapshot_id: str, copy: Path) -> CopyChecked:
    """SQLite's full `integrity_check` and its `foreign_key_check` on a restored copy.

    A damaged copy fails the drill. Rows that break a foreign key do not: SQLite enforces foreign
    keys only when a program asks it to, so such rows are the shop's own, in the live database
    too, and a backup faithfully keeps them; they are reported for the owner to look at.
    """
    problems = check_database(copy, quick=False)
    if problems:
        shown = "; ".join(problems[:3])
        raise DrillFoundDamage(
            f"database snapshot {snapshot_id[:12]} restores, but SQLite's integrity_check finds the "
            f"copy damaged: {shown}"
        )
    count, rows = _foreign_key_rows(copy)
    verdict = "ok" if count == 0 else f"{count} row(s) break a foreign key"
    return CopyChecked("ok", verdict, count, rows)


def _foreign_key_rows(copy: Path) -> tuple[int, list[str]]:
    conn = sqlite3.connect(f"file:{copy}?immutable=1", uri=True)
    try:
        count, shown = 0, list[str]()
        for table, rowid, parent, _fkid in conn.execute("PRAGMA foreign_key_check"):
            count += 1
            if len(shown) < FOREIGN_KEY_ROWS_SHOWN:
                shown.append(f"{table} row {rowid} -> {parent}")
        return count, shown
    except sqlite3.DatabaseError as e:
        raise DrillFoundDamage(f"SQLite's foreign_key_check could not read the restored copy: {e}") from e
    finally:
        conn.close()


# ---- the images ---------------------------------------------------------------------------------


def sample_size(total: int, at_least: int, percent: float) -> int:
    """How many of `total` images a drill restores: `at_least`, or `percent` of them if more."""
    return min(total, max(at_least, math.ceil(total * percent / 100)))


def check_images(
    repo: Repository,
    snapshot_id: str,
    manifest: Manifest,
    folder: Path,
    *,
    at_least: int,
    percent: float,
    rng: random.Random | None = None,
    progress: Progress | None = None,
) -> ImagesChecked:
    """Restore a random sample of a files snapshot's images into `folder`, one at a time, and check
    each against its manifest entry: its size and its SHA-256, read back from the disk.

    Reading the entries authenticates every tree blob of the snapshot; the sample is drawn from
    all its files (the entries are held in memory, about 1 KiB each).
    """
    where = f"images snapshot {snapshot_id[:12]}"
    try:
        repo.ensure_index()
        files = [e for e in iter_entries(repo, manifest) if e.type == "file"]
    except CapsuleError as e:
        if e.category is not Category.DAMAGED:
            raise
        raise DrillFoundDamage(f"{where} cannot be listed: {e}") from e
    chosen = (rng or random.SystemRandom()).sample(files, sample_size(len(files), at_least, percent))
    total = sum(e.size for e in chosen)
    done = checked = 0
    for number, entry in enumerate(chosen):
        target = folder / f"{number:06d}"
        try:
            write_file(repo, entry, target)
        except CapsuleError as e:
            if e.category not in (Category.DAMAGED, Category.NOT_FOUND):
                raise
            raise DrillFoundDamage(f"image {entry.path!r} of {where} does not restore: {e}") from e
        size, digest = target.stat().st_size, sha256_file(target)
        if (size, digest) != (entry.size, entry.sha256):
            raise DrillFoundDamage(
                f"image {entry.path!r} of {where} restored as {size} bytes with SHA-256 {digest[:12]}, "
                f"but its manifest says {entry.size} bytes with {str(entry.sha256)[:12]}"
            )
        target.unlink()
        checked += 1
        done += size
        if progress is not None:
            progress(done, total)
    return ImagesChecked(len(files), len(chosen), checked, done)
