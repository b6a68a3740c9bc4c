"""Restore: fetch and authenticate every blob, write to a temporary file, check, then rename.

Nothing reaches its final name before its SHA-256 matches the manifest, or, for a database entry
without one, each chunk's keyed id matches the one the manifest names (`contentcheck`); and, for a
database, SQLite's own check passes. Paths from the manifest are validated against the target folder first.

The images' restore (`capsule.adapters.files.restore`) and `cat` read blobs through this module
too; SQLite's own code (the check, its side files) loads only where a database is restored.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from capsule.adapters.errors import NOT_INDEXED_ADVICE, BlobNotFound, DiskFull, IntegrityError, RestoreRefused
from capsule.adapters.filedigest import sha256_file
from capsule.adapters.logs import get_logger
from capsule.adapters.partials import create_private, make_partial, remove_abandoned
from capsule.adapters.repository.backends.local import fsync_dir
from capsule.adapters.repository.backends.storage import costly_reads, local_paths
from capsule.adapters.repository.chunks import read_id_lists, split_ids, workers
from capsule.adapters.repository.contentcheck import PageIdCheck
from capsule.adapters.repository.entry_rules import check_content, check_database_snapshot, restored_mode
from capsule.adapters.repository.index import BlobLocation
from capsule.adapters.repository.packcache import whole_packs
from capsule.adapters.repository.repo import Repository
from capsule.adapters.workers.restorepool import write_with_pool
from capsule.adapters.workers.sealpool import SealPool, default_workers
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, Manifest, check_relative_path

log = get_logger(__name__)

SPAN_LIMIT = 1024 * 1024  # one read covers neighbouring blobs of a pack up to this size
IN_FLIGHT = 8
SYNC_EVERY = 64 * 1024 * 1024
LISTS_PER_GROUP = 16

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RestoredFile:
    path: Path
    size: int
    sha256: str


def safe_target(root: Path, relative: str) -> Path:
    """The path under `root` for a manifest path, refusing anything that could land outside it."""
    rel = check_relative_path(relative)
    root = root.resolve()
    target = root.joinpath(*rel.parts)
    # Every existing parent must be a real folder inside root: a symlink could lead elsewhere.
    current = root
    for part in rel.parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise UnsafePath(f"the path {relative!r} passes through {current}, which is not a folder")
    if target.is_symlink():
        raise UnsafePath(f"{target} is a symbolic link; refusing to write through it")
    return target


def content_id_groups(repo: Repository, entry: Entry) -> Iterator[bytes]:
    """The entry's data blob ids in order, end to end, a few thousand at a time (memory stays
    bounded)."""
    if not entry.blob_lists:
        yield b"".join(bytes.fromhex(b) for b in entry.blobs)
        return
    for start in range(0, len(entry.blob_lists), LISTS_PER_GROUP):
        yield b"".join(read_id_lists(repo, entry.blob_lists[start : start + LISTS_PER_GROUP]))


def content_ids(repo: Repository, entry: Entry) -> Iterator[list[bytes]]:
    """The same ids, a list of them at a time."""
    for group in content_id_groups(repo, entry):
        yield split_ids(group)


Batch = list[tuple[bytes, BlobLocation]]


def blob_batches(locs: Iterable[tuple[bytes, BlobLocation]]) -> Iterator[Batch]:
    """Blobs in file order, in batches of about SPAN_LIMIT stored bytes, whatever packs they are in.

    A snapshot after many incremental backups takes its pages from many packs; batching by size
    rather than by contiguous run keeps the number of requests small. Members of one bundle that
    follow each other stay in one batch, and their bundle's bytes count once.
    """
    batch: Batch = []
    size = 0
    for item in locs:
        loc = item[1]
        last = batch[-1][1] if batch else None
        if last is not None and (last.pack_id, last.offset) == (loc.pack_id, loc.offset):
            batch.append(item)
            continue
        if size >= SPAN_LIMIT:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += loc.length
    if batch:
        yield batch


def read_batch(repo: Repository, batch: Batch, check_id: bool = False) -> bytes:
    # The whole file's SHA-256 is checked at the end: no need to hash each blob as well, unless
    # the entry has none (`check_id`).
    return b"".join(repo.read_blobs(batch, check_id=check_id))


def locate_all(repo: Repository, entry: Entry) -> Iterator[tuple[bytes, BlobLocation]]:
    """(id, location) of every blob of `entry`, in order; BlobNotFound if any is not indexed."""
    for ids in content_ids(repo, entry):
        locs = repo.index.locate_many(ids)
        missing = [i.hex()[:12] for i, loc in zip(ids, locs, strict=True) if loc is None]
        if missing:
            raise BlobNotFound(
                f"{len(missing)} blob(s) of {entry.path} are in no index (first: {missing[0]}); "
                f"{NOT_INDEXED_ADVICE}"
            )
        yield from ((i, loc) for i, loc in zip(ids, locs, strict=True) if loc is not None)


def write_entry(
    repo: Repository,
    entry: Entry,
    target: Path,
    progress: Progress | None = None,
    *,
    pool: SealPool | None = None,
    check_database: bool = False,
    mode: int | None = None,
    special_bits: bool = False,
) -> RestoredFile:
    """Write `entry` to a temporary file beside `target`, verified and fsynced; return it.

    Every blob is authenticated and the file's SHA-256 must equal the manifest's (for a database
    entry without one: every chunk's keyed id must be the one it names) before this returns;
    `check_database` also runs SQLite's quick_check on a database. The file is private (0600)
    while it is written and gets its final `mode` (by default the snapshot's) only once it is
    complete and checked. The SHA-256 returned is always that of the bytes written.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent, target.name)
    try:
        # Left in the list of this process's temporary files once returned: the caller renames it.
        fd, tmp = make_partial(target, create_private)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {target.parent} is full; free space and retry") from e
        raise
    try:
        with open(fd, "wb") as f, ThreadPoolExecutor(workers()) as threads, ThreadPoolExecutor(1) as syncer:
            if pool is not None:
                written, digest = write_with_pool(
                    repo,
                    pool,
                    entry,
                    tmp,
                    fd=f.fileno(),
                    id_groups=content_id_groups(repo, entry),
                    progress=progress,
                    page_ids=page_id_check(repo, entry, target),
                )
            else:
                written, digest = _write_in_process(
                    repo, entry, f, threads=threads, syncer=syncer, progress=progress
                )
            syncer.shutdown(wait=True)
            # Without a SHA-256 in the entry, every chunk was held to its id as it was written.
            check_content(entry, written, digest, ids_checked=entry.sha256 is None)
            # SQLite's check reads the file from the page cache while the disk takes the last writes.
            checking = None
            if check_database and entry.sqlite:
                from capsule.adapters.sqlite.snapshot import check_database as check_sqlite  # noqa: PLC0415

                checking = threads.submit(check_sqlite, tmp)
            os.fsync(f.fileno())
            problems = checking.result() if checking is not None else []
        if problems:
            raise IntegrityError(f"the restored database {entry.path} fails SQLite's check: {problems[0]}")
        os.chmod(tmp, restored_mode(entry.mode, special_bits) if mode is None else mode)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {target.parent} is full; free space and retry") from e
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return RestoredFile(tmp, written, digest)


def _write_in_process(
    repo: Repository,
    entry: Entry,
    f: BinaryIO,
    *,
    threads: ThreadPoolExecutor,
    syncer: ThreadPoolExecutor,
    progress: Progress | None,
) -> tuple[int, str]:
    """Blobs opened on threads of this process and written in order; return (bytes, SHA-256)."""
    sha = hashlib.sha256()
    futures: deque[Future[bytes]] = deque()
    written = synced = 0
    check_id = entry.sha256 is None  # then each blob's id is checked against its plaintext
    for batch in blob_batches(locate_all(repo, entry)):
        futures.append(threads.submit(read_batch, repo, batch, check_id))
        if len(futures) < IN_FLIGHT:
            continue
        written += _write_blobs(f, sha, futures.popleft().result())
        if written - synced >= SYNC_EVERY:
            # Start writing back to disk now, so the final fsync has little left to do.
            f.flush()
            syncer.submit(os.fdatasync, f.fileno())
            synced = written
        if progress:
            progress(written, entry.size)
    while futures:
        written += _write_blobs(f, sha, futures.popleft().result())
    if progress:
        progress(written, entry.size)
    f.flush()
    return written, sha.hexdigest()


def _write_blobs(f: BinaryIO, sha: hashlib._Hash, data: bytes | memoryview) -> int:
    f.write(data)
    sha.update(data)
    return len(data)


def page_id_check(repo: Repository, entry: Entry, target: Path) -> PageIdCheck | None:
    """The check of a database entry's bytes against its chunk ids, if it has no SHA-256."""
    if entry.sha256 is not None or entry.sqlite is None:
        return None
    chunk = entry.sqlite.page_size * entry.sqlite.pages_per_chunk
    return PageIdCheck(repo.sealer, chunk, str(target))


def file_matches(repo: Repository, entry: Entry, path: Path) -> str | None:
    """The SHA-256 of the file at `path` if it holds `entry`'s bytes, else None: held to the
    entry's SHA-256, or, for a database entry without one, to its chunk ids (the index is read)."""
    if path.stat().st_size != entry.size:
        return None
    check = page_id_check(repo, entry, path)
    if check is None:
        digest = sha256_file(path)
        return digest if digest == entry.sha256 else None
    for ids in content_id_groups(repo, entry):
        check.expect(ids)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(SPAN_LIMIT):
            sha.update(block)
            check.update(block)
    try:
        check.finish()
    except IntegrityError:
        return None
    return sha.hexdigest()


def put_in_place(tmp: Path, target: Path) -> None:
    """Move a checked file to its name; a database first loses stale -wal/-shm files beside it."""
    from capsule.adapters.sqlite.snapshot import SIDE_FILES  # noqa: PLC0415 - a database's restore alone

    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{target}{suffix}")
    os.replace(tmp, target)
    fsync_dir(target.parent)


def existing_outputs(target: Path) -> list[Path]:
    from capsule.adapters.sqlite.snapshot import SIDE_FILES  # noqa: PLC0415 - a database's restore alone

    return [p for p in (target, *(Path(f"{target}{s}") for s in SIDE_FILES)) if p.exists()]


def restore_snapshot(
    repo: Repository,
    manifest: Manifest,
    to: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    check_database: bool = False,
    workers: int | None = None,
    special_bits: bool = False,
) -> list[RestoredFile]:
    """Restore the database of `manifest` under `to`; setuid and setgid only with `special_bits`."""
    check_database_snapshot(manifest)
    # The workers start while the index loads, so their start-up costs nothing. One more worker
    # than cores: a worker waiting for its direct write to reach the disk leaves its core to
    # another (see docs/performance.md, "One more restore worker than cores").
    # The workers open packs by path: where the backend has none, threads here read its ranges.
    pool = (
        SealPool(repo.master_key, repo.compression_level, workers or default_workers() + 1)
        if workers != 0 and local_paths(repo.backend) is not None
        else None
    )
    try:
        return _restore_entries(
            repo,
            manifest,
            to,
            force=force,
            progress=progress,
            check=check_database,
            pool=pool,
            special_bits=special_bits,
        )
    finally:
        if pool is not None:
            pool.close()


def fetch_whole_packs(
    repo: Repository, entries: list[Entry], to: Path
) -> contextlib.AbstractContextManager[object]:
    """From a backend whose every read is a request (Drive), the packs a restore of `entries` needs
    most of are fetched whole, once, into a temporary folder under `to` (see packcache); from any
    other, nothing changes."""
    return whole_packs(repo, entries, to) if costly_reads(repo.backend) else contextlib.nullcontext()


def _restore_entries(
    repo: Repository,
    manifest: Manifest,
    to: Path,
    *,
    force: bool,
    progress: Progress | None,
    check: bool,
    pool: SealPool | None,
    special_bits: bool,
) -> list[RestoredFile]:
    repo.ensure_index()
    to.mkdir(parents=True, exist_ok=True)
    targets = [(e, safe_target(to, e.path)) for e in manifest.entries]
    if not force:
        clashes = [p for _, t in targets for p in existing_outputs(t)]
        if clashes:
            raise RestoreRefused(
                f"{clashes[0]} already exists; restore elsewhere with --to, or add --force to replace it"
            )
    total = sum(e.size for e in manifest.entries)
    base = 0
    done = []

    def scaled(n: int, _t: int) -> None:
        if progress:
            progress(base + n, total)

    with fetch_whole_packs(repo, manifest.entries, to) if pool is None else contextlib.nullcontext():
        for entry, target in targets:
            restored = write_entry(
                repo, entry, target, scaled, pool=pool, check_database=check, special_bits=special_bits
            )
            put_in_place(restored.path, target)
            done.append(RestoredFile(target, restored.size, restored.sha256))
            base += entry.size
            log.info("file restored", path=str(target), bytes=restored.size)
    return done
