"""Database backup: copy the live database consistently, store it page-aligned, commit a manifest.

The store (`store_database`: the copy and its pages) and the commit (`commit_database`: the
manifest) are separate functions so that a job runner can run, record and retry each one;
`backup_database` runs both, without a job.
Chunks follow SQLite pages, so a sale that rewrites a few pages stores about those pages again and
nothing more, yet every snapshot lists all of its blobs and stands alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict

from capsule.adapters.repository.backups import (
    BackupResult,
    find_committed,
    full_check,
    latest_snapshot,
    missing_packs_warning,
)
from capsule.adapters.repository.chunks import (
    ChunkStore,
    StoreStats,
    entry_blob_fields,
    load_id_list,
    load_id_lists,
    read_id_lists,
    split_ids,
)
from capsule.adapters.repository.lock import pid_alive
from capsule.adapters.repository.rebuild import adopt_unindexed_packs
from capsule.adapters.repository.repo import Repository
from capsule.adapters.sqlite.inplace import frozen_image, still_frozen
from capsule.adapters.sqlite.livecopy import LiveCopy, reports_holes
from capsule.adapters.sqlite.pagestore import ParentChunks, store_file_chunks
from capsule.adapters.sqlite.snapshot import (
    CheckpointKeeper,
    DatabaseCopy,
    check_source,
    checkpoints_kept,
    copy_database,
    remove_database_files,
)
from capsule.adapters.workers.sealpool import SealPool, database_pool
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import (
    MANIFEST_VERSION,
    PAGE_IDS_MANIFEST_VERSION,
    Entry,
    Manifest,
    SourceIdentity,
    SqliteInfo,
    Totals,
)

log = structlog.get_logger(__name__)

# A database under this fraction of its last snapshot's size is backed up with a warning: a shop's
# database grows or keeps its size (SQLite reuses free pages); one that lost nine tenths was
# probably replaced, truncated or emptied by mistake, and the snapshot before it matters.
SHRINK_WARNING_FRACTION = 0.10
CHUNK_TARGET = 4096  # bytes: one page of a default database; smaller pages are grouped
READ_SIZE = 1024 * 1024
COPY_SUFFIX = ".capsule-snapshot"
# A WAL database is read where it lies once the checkpoint keeper has frozen its file (see
# `inplace`); False takes a copy of it every time, as before.
READ_IN_PLACE = True

Progress = Callable[[int, int], None]


def pages_per_chunk(page_size: int) -> int:
    return max(1, CHUNK_TARGET // page_size)


def read_batches(path: Path, chunk_size: int) -> Iterator[list[bytes]]:
    read_size = max(chunk_size, READ_SIZE - READ_SIZE % chunk_size)
    with open(path, "rb") as f:
        while block := f.read(read_size):
            yield [block[i : i + chunk_size] for i in range(0, len(block), chunk_size)]


@contextlib.contextmanager
def _unlinked(copy: DatabaseCopy) -> Iterator[DatabaseCopy]:
    """The copy, removed from its folder but kept open and readable through /proc.

    A deleted file's dirty pages are dropped instead of written to disk: the copy costs no disk
    writes that compete with the till's own commits, and a crash leaves nothing behind.
    """
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    if not fd_dir.is_dir():
        yield copy
        return
    fd = os.open(copy.path, os.O_RDONLY)
    try:
        remove_database_files(copy.path)
        yield dataclasses.replace(copy, path=fd_dir / str(fd))
    finally:
        os.close(fd)


RAM_DIR = Path("/dev/shm")  # noqa: S108 - only a private 0700 folder of ours is used there


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _private_dir(parent: Path) -> Path | None:
    """A folder only we can enter under a shared parent, or None if it cannot be made safely."""
    path = parent / f"capsule-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("not using a shared memory folder that is not ours alone", path=str(path))
        return None
    return path


def copy_directory(staging: Path, source: Path, *, in_memory: bool = True, ram: Path = RAM_DIR) -> Path:
    """Where to put the consistent copy: in RAM (tmpfs) when it fits comfortably, else `staging`.

    A copy in RAM costs no disk writes at all: on a disk, a machine with little memory starts
    writing the copy back while the till is committing, only for it to be deleted a moment later.
    "Comfortably" means at most half the free tmpfs space and a quarter of the available memory.
    """
    if not in_memory or not ram.is_dir():
        return staging
    try:
        size = source.stat().st_size + _size_or_zero(Path(f"{source}-wal"))
        fs = os.statvfs(ram)
        fits = size * 2 <= fs.f_bavail * fs.f_frsize and size * 4 <= _mem_available()
        return (_private_dir(ram) or staging) if fits else staging
    except OSError as e:
        log.debug("memory staging unavailable", error=str(e))
        return staging


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def clear_abandoned_copies(staging: Path) -> None:
    """Delete database copies left in staging by backups whose process is gone."""
    if not staging.is_dir():
        return
    for path in staging.glob(f"*{COPY_SUFFIX}"):
        pid = path.name[: -len(COPY_SUFFIX)].rsplit(".", 1)[-1].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.info("removed a database copy left by an interrupted backup", path=str(path))
            remove_database_files(path)


def _content_ids(repo: Repository, entry: Entry) -> list[bytes]:
    if entry.blob_lists:
        return load_id_lists(repo, entry.blob_lists)
    return [bytes.fromhex(b) for b in entry.blobs]


def _differing(old: list[bytes], new: list[bytes]) -> int:
    return len(new) - sum(1 for a, b in zip(old, new, strict=False) if a == b)


def _changed_chunks(repo: Repository, parent: Entry | None, entry: Entry) -> int | None:
    """How many chunks differ from the parent's; equal list blobs are not even read."""
    if parent is None:
        return None
    try:
        if not (parent.blob_lists and entry.blob_lists):
            return _differing(_content_ids(repo, parent), _content_ids(repo, entry))
        changed = 0
        for position, new_list in enumerate(entry.blob_lists):
            old_list = parent.blob_lists[position] if position < len(parent.blob_lists) else None
            if old_list == new_list:
                continue
            old_ids = split_ids(load_id_list(repo, old_list)) if old_list else []
            changed += _differing(old_ids, split_ids(load_id_list(repo, new_list)))
        return changed
    except CapsuleError as e:  # the figure is informative; a damaged parent must not fail a backup
        log.warning("could not compare with the parent snapshot", error=str(e))
        return None


def parent_chunks(repo: Repository, parent: Entry | None, chunk_size: int) -> ParentChunks | None:
    """The parent snapshot's chunk ids, if its chunks are `chunk_size` bytes too, with which of them
    are still stored (one search of the index); None if there is none or it cannot be read.

    What a backup names without looking it up is what the parent names and the index still holds in
    a pack that is there: a parent that lost blobs costs a look-up of those chunks, not a snapshot
    that cannot restore.
    """
    if parent is None or parent.sqlite is None:
        return None
    if parent.sqlite.page_size * parent.sqlite.pages_per_chunk != chunk_size:
        return None
    try:
        if parent.blob_lists:
            ids = b"".join(read_id_lists(repo, parent.blob_lists))
        else:
            ids = b"".join(bytes.fromhex(b) for b in parent.blobs)
    except CapsuleError as e:  # the look-ups of every chunk are still there to fall back on
        log.warning("could not read the parent snapshot's chunk ids; every chunk is looked up", error=str(e))
        return None
    lists = frozenset(bytes.fromhex(i) for i in parent.blob_lists)
    return ParentChunks(ids, repo.known_joined(ids), lists)


def store_database_copy(
    repo: Repository,
    copy: DatabaseCopy,
    source: Path,
    *,
    full: bool,
    progress: Progress | None = None,
    pool: SealPool | None = None,
    growing: LiveCopy | None = None,
    parent: Entry | None = None,
) -> tuple[Entry, StoreStats]:
    """Store the copy's pages; return the manifest entry, the chunk ids and the figures.

    `parent` is the parent snapshot's entry: unless `full`, a chunk whose id is the parent's at the
    same place is not looked up on its own (see `parent_chunks`).
    """
    chunk_size = copy.page_size * pages_per_chunk(copy.page_size)
    check = full_check(repo) if full else None
    if pool is not None:
        before = None if full else parent_chunks(repo, parent, chunk_size)
        blob_fields, stats, digest = store_file_chunks(
            repo,
            pool,
            copy.path,
            copy.size,
            chunk_size,
            has_blob=check,
            progress=progress,
            growing=growing,
            parent=before,
        )
    else:
        ids, stats, digest = _store_in_process(repo, copy, chunk_size, check, progress)
        blob_fields = entry_blob_fields(repo, ids, check)
    info = source.stat()
    entry = Entry(
        path=source.name,
        size=copy.size,
        mode=info.st_mode & 0o7777,
        mtime_ns=info.st_mtime_ns,
        inode=info.st_ino,
        sha256=digest,
        sqlite=SqliteInfo(
            page_size=copy.page_size,
            page_count=copy.page_count,
            journal_mode=copy.journal_mode,
            pages_per_chunk=pages_per_chunk(copy.page_size),
        ),
        blobs=blob_fields["blobs"],
        blob_lists=blob_fields["blob_lists"],
    )
    return entry, stats


def _store_in_process(
    repo: Repository,
    copy: DatabaseCopy,
    chunk_size: int,
    check: Callable[[bytes], bool] | None,
    progress: Progress | None,
) -> tuple[bytes, StoreStats, str]:
    """The same work on threads of this process (no worker processes)."""
    sha = hashlib.sha256()
    done = 0

    def on_batch(chunks: list[bytes], _ids: list[bytes]) -> None:
        nonlocal done
        for c in chunks:
            sha.update(c)
            done += len(c)
        if progress is not None:
            progress(done, copy.size)

    ids = bytearray()
    with ChunkStore(repo, check) as store:
        for blob_id in store.store_batches(read_batches(copy.path, chunk_size), on_batch=on_batch):
            ids += blob_id
    return bytes(ids), store.stats, sha.hexdigest()


def shrink_warning(size: int, parent: tuple[str, Manifest] | None) -> str | None:
    """One sentence, logged, when a database of `size` bytes is under SHRINK_WARNING_FRACTION of
    its last snapshot `parent`; None otherwise."""
    if parent is None or not parent[1].entries:
        return None
    before = parent[1].entries[0].size
    if size >= before * SHRINK_WARNING_FRACTION:
        return None
    percent = round(100 * SHRINK_WARNING_FRACTION)
    text = (
        f"the database is {size} bytes, under {percent}% of its last snapshot {parent[0][:12]} "
        f"({before} bytes); if the shop did not remove most of its data on purpose, keep that "
        f"snapshot and check it: `capsule restore {parent[0][:12]} --to restored/`"
    )
    log.warning(text, bytes=size, last_snapshot=parent[0][:12], last_bytes=before)
    return text


class StoredDatabase(BaseModel):
    """What the store step leaves for the commit step: the entry and the figures of its work."""

    model_config = ConfigDict(frozen=True)

    source: str
    taken_at: datetime | None = None
    """When the consistent copy was taken: the moment the snapshot shows."""
    entry: Entry
    parent: str | None
    blobs: int
    new_blobs: int
    new_bytes: int
    stored_bytes: int
    changed_chunks: int | None
    seconds: float
    snapshot_window_seconds: float
    warnings: list[str] = []
    """What the backup found worth telling (the manifest keeps them; the step's result too)."""
    identity: SourceIdentity | None = None
    """What the copy is of (absent in results recorded before snapshots knew it)."""


def store_database(
    repo: Repository,
    source: Path,
    staging: Path,
    *,
    full: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    copy_in_memory: bool = True,
) -> StoredDatabase:
    """Take a consistent copy of `source` and store its pages; nothing is committed yet.

    Safe to run again after a crash: packs an interrupted run wrote are adopted into the index
    first, so their blobs are not stored a second time.
    """
    started = time.perf_counter()
    taken_at = datetime.now(UTC)
    check_source(source)  # before anything is copied: an empty file is a new database to SQLite
    # The till's checkpoints are the backup's from here until its packs and index are on disk: no
    # sale waits for one while the backup keeps the disk busy (see CheckpointKeeper).
    with checkpoints_kept(source) as keeper:
        repo.ensure_index()
        adopt_unindexed_packs(repo)
        lost = missing_packs_warning(repo)
        parent = latest_snapshot(repo, "database", str(source.resolve()))
        parent_entry = parent[1].entries[0] if parent and parent[1].entries else None
        stored_before = repo.stored_bytes
        copy_dir = copy_directory(staging, source, in_memory=copy_in_memory)
        clear_abandoned_copies(staging)
        if copy_dir != staging:
            clear_abandoned_copies(copy_dir)
        # The PID in the name keeps two backups of one database apart and tells a crashed one's copy.
        copy_path = copy_dir / f"{source.name}.{os.getpid()}-{secrets.token_hex(4)}{COPY_SUFFIX}"
        # Worker processes, where it takes them, start while SQLite copies the database.
        pool = None
        if workers != 0:
            has_parent = parent_entry is not None
            pool = database_pool(repo.master_key, repo.compression_level, workers, parent=has_parent)
        try:
            stored = None
            in_place = None
            if pool is not None and keeper is not None and READ_IN_PLACE:
                in_place = _store_in_place(
                    repo, source, keeper, full=full, progress=progress, pool=pool, parent=parent_entry
                )
            if in_place is not None:
                copy, stored = in_place
            # In rollback-journal mode the copy blocks the till's commits until it ends: there it
            # runs alone, as fast as it can, rather than beside the store.
            elif pool is not None and keeper is not None and reports_holes(copy_dir):
                copy, stored = _store_while_copying(
                    repo,
                    source,
                    copy_path,
                    full=full,
                    progress=progress,
                    pool=pool,
                    keeper=keeper,
                    parent=parent_entry,
                )
            else:
                copy = copy_database(source, copy_path, keeper=keeper)
            if stored is None:
                with _unlinked(copy) as readable:
                    stored = store_database_copy(
                        repo, readable, source, full=full, progress=progress, pool=pool, parent=parent_entry
                    )
            entry, stats = stored
            repo.flush()
        finally:
            if pool is not None:
                pool.close()
            remove_database_files(copy_path)
        repo.save_index_cache()  # the next command reads this index back instead of rebuilding it
    changed = stats.changed if stats.changed is not None else _changed_chunks(repo, parent_entry, entry)
    return StoredDatabase(
        source=str(source.resolve()),
        taken_at=taken_at,
        entry=entry,
        parent=parent[0] if parent else None,
        blobs=stats.blobs,
        new_blobs=stats.new_blobs,
        new_bytes=stats.new_bytes,
        stored_bytes=repo.stored_bytes - stored_before,
        changed_chunks=changed,
        seconds=round(time.perf_counter() - started, 3),
        snapshot_window_seconds=round(copy.seconds, 3),
        warnings=[w for w in (lost, shrink_warning(copy.size, parent)) if w],
        identity=copy.identity,
    )


def _store_in_place(
    repo: Repository,
    source: Path,
    keeper: CheckpointKeeper,
    *,
    full: bool,
    progress: Progress | None,
    pool: SealPool,
    parent: Entry | None = None,
) -> tuple[DatabaseCopy, tuple[Entry, StoreStats]] | None:
    """Store the WAL database's own file, frozen by the keeper (see `inplace`); None if it could
    not be frozen or read as a snapshot, or was not left alone while it was read: then the caller
    copies it. Blobs stored on the way are content-addressed: the copy's store finds them."""
    began = time.perf_counter()
    with keeper.frozen() as folded:
        found = frozen_image(source, began) if folded is not None else None
        if found is None:
            return None
        image, header = found
        stored = store_database_copy(
            repo, image, source, full=full, progress=progress, pool=pool, parent=parent
        )
        if not (keeper.held and still_frozen(source, header)):
            log.warning("the database changed while it was read in place; reading a copy of it instead")
            return None
    return dataclasses.replace(image, seconds=time.perf_counter() - began), stored


def _store_while_copying(
    repo: Repository,
    source: Path,
    copy_path: Path,
    *,
    full: bool,
    progress: Progress | None,
    pool: SealPool,
    keeper: CheckpointKeeper,
    parent: Entry | None = None,
) -> tuple[DatabaseCopy, tuple[Entry, StoreStats] | None]:
    """Store the copy block by block while SQLite writes it; None if it must be stored again whole."""
    live = LiveCopy(source, copy_path, keeper)
    try:
        expected = live.start()
        stored = store_database_copy(
            repo, expected, source, full=full, progress=progress, pool=pool, growing=live, parent=parent
        )
        copy = live.finish()
    finally:
        live.close()
    if (copy.size, copy.page_count) != (expected.size, expected.page_count):
        # Not seen: the snapshot's page count fixes the copy's size. Should SQLite ever write a
        # copy of another size, the blocks already stored described the wrong file.
        log.debug("the copy differs from its snapshot's size; storing it whole", expected=expected.size)
        return copy, None
    remove_database_files(copy_path)
    return copy, stored


def commit_database(
    repo: Repository,
    stored: StoredDatabase,
    *,
    full: bool,
    now: datetime,
    tags: list[str] | None = None,
    job_id: str | None = None,
    extra_seconds: float = 0.0,
    retry: bool = True,
) -> BackupResult:
    """Write the snapshot manifest for a stored database.

    With a `job_id`, a manifest this job already wrote (its process died before it could say so)
    is found and returned instead of writing a second snapshot; `retry` False says this is the
    step's first attempt, so there is none to look for (the search reads every manifest).
    """
    if job_id is not None and retry and (found := find_committed(repo, job_id, "database")) is not None:
        return found
    manifest = Manifest(
        version=MANIFEST_VERSION if stored.entry.sha256 is not None else PAGE_IDS_MANIFEST_VERSION,
        kind="database",
        full=full,
        time=stored.taken_at or now,
        hostname=socket.gethostname(),
        source=stored.source,
        identity=stored.identity,
        parent=stored.parent,
        tags=tags or [],
        job_id=job_id,
        entries=[stored.entry],
        warnings=stored.warnings,
        totals=Totals(
            files=1,
            bytes=stored.entry.size,
            blobs=stored.blobs,
            new_blobs=stored.new_blobs,
            new_bytes=stored.new_bytes,
            stored_bytes=stored.stored_bytes,
            changed_chunks=stored.changed_chunks,
            warnings=len(stored.warnings),
            duration_seconds=round(stored.seconds + extra_seconds, 3),
        ),
    )
    snapshot_id = repo.save_snapshot(manifest)
    log.info(
        "database backed up",
        snapshot=snapshot_id[:12],
        bytes=stored.entry.size,
        new_blobs=stored.new_blobs,
        stored_bytes=stored.stored_bytes,
        snapshot_window_seconds=stored.snapshot_window_seconds,
    )
    return BackupResult(snapshot_id, manifest)


def backup_database(
    repo: Repository,
    source: Path,
    staging: Path,
    *,
    full: bool = False,
    now: datetime,
    tags: list[str] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    copy_in_memory: bool = True,
) -> BackupResult:
    """Take a consistent copy of `source`, store it and commit its manifest, in one call."""
    stored = store_database(
        repo, source, staging, full=full, progress=progress, workers=workers, copy_in_memory=copy_in_memory
    )
    # The caller's `now` names the snapshot's moment (tests order snapshots by it).
    return commit_database(repo, stored.model_copy(update={"taken_at": now}), full=full, now=now, tags=tags)
