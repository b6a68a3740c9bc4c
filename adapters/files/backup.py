"""Files backup: walk the uploads folder, reuse what did not change, store the rest, commit a manifest.

A file whose size, mtime_ns, inode and ctime_ns match its entry in the parent snapshot is reused
without being read (unless the backup is full; `_unchanged` says why the change time too). Others
are read once: hashed whole with SHA-256, cut into content-defined chunks (FastCDC) so that an
insertion re-stores only the chunks around it, and each new chunk is sealed; bytes that are already
compressed (JPEG, PNG, WebP, ZIP...) are not compressed again. Small files of one folder are read
together on a thread, in batches. Folders are opened without following links, one file descriptor
each, and files through their folder's descriptor, so a link swapped in while the walk runs cannot
lead it out of the root. A file that cannot be read, vanishes or changes while it is read is never
fatal: the backup carries on and lists it in its warnings.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyfastcdc
import structlog
from pydantic import BaseModel, ConfigDict

from capsule.adapters.errors import SourceError
from capsule.adapters.files.parent import checked_parent, same, stored_tree, unchanged
from capsule.adapters.files.tree import PriorEntry, RawGroup, TreeWriter, path_key
from capsule.adapters.files.walk import Walk, describe
from capsule.adapters.repository.backups import (
    BackupResult,
    find_committed,
    full_check,
    latest_snapshot,
    missing_packs_warning,
)
from capsule.adapters.repository.chunks import entry_blob_fields, workers
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.rebuild import adopt_unindexed_packs
from capsule.adapters.repository.repo import PreparedBlob, Repository
from capsule.domain.manifest import Entry, Manifest, SourceIdentity, Totals

log = structlog.get_logger(__name__)

KiB = 1024
MiB = 1024 * KiB
# FastCDC: no chunk under CDC_MIN (smaller files are one chunk), about 768 KiB on average.
CDC_MIN = 256 * KiB
CDC_AVG = 512 * KiB
CDC_MAX = 4 * MiB
WHOLE_READ = 8 * MiB  # files up to this size are read in one go on a reading thread
# Small files of one folder go to a reading thread together, up to this many or this many bytes:
# one task, one look-up in the index and one hand-over of the interpreter lock for all of them
# (see docs/performance.md, "Small files read in batches").
BATCH_FILES = 64
BATCH_BYTES = 1 * MiB
IN_FLIGHT_BYTES = 64 * MiB
IN_FLIGHT_FILES = 512
# Threads that list folders ahead of the walk when there is no parent to build on (a first or a
# full backup): then every file is read anyway, and the walk keeps up with the reading threads
# better with folders listed ahead; with a parent, the walking thread lists them alone (see
# docs/performance.md, "One walking thread").
LIST_THREADS = 2
WARNINGS_KEPT = 200  # in the manifest, and in the store step's result (an event: keep it small)
PROGRESS_EVERY = 0.25  # seconds

# The first bytes of formats that are compressed already: zstd would spend time for nothing.
_COMPRESSED_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF8",  # GIF
    b"PK\x03\x04",  # ZIP, and the office formats built on it
    b"\x1f\x8b",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\xfd7zXZ\x00",  # xz
    b"BZh",  # bzip2
    b"7z\xbc\xaf\x27\x1c",  # 7-Zip
    b"Rar!\x1a\x07",  # RAR
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"\xff\x0a",  # JPEG XL
    b"OggS",  # Ogg
    b"ID3",  # MP3
)


def is_compressed_format(head: bytes | memoryview) -> bool:
    """True for content that compresses no further: images, archives, audio, video."""
    head = bytes(head[:16])
    if head.startswith(_COMPRESSED_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return True
    return head[4:8] == b"ftyp"  # MP4, MOV, HEIC, AVIF


class StoredFiles(BaseModel):
    """What the store step leaves for the commit step: where the entries are, and the figures."""

    model_config = ConfigDict(frozen=True)

    source: str
    taken_at: datetime
    tree: list[str]
    parent: str | None
    files: int
    dirs: int
    symlinks: int
    bytes: int
    blobs: int
    new_blobs: int
    new_bytes: int
    stored_bytes: int
    read_files: int
    read_bytes: int
    warnings: list[str]
    warning_count: int
    seconds: float


@dataclass
class _Figures:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    blobs: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    read_files: int = 0
    read_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0

    def warn(self, path: str, reason: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < WARNINGS_KEPT:
            self.warnings.append(f"{path}: {reason}")
        log.warning("not backed up as it is", path=path, reason=reason)


@dataclass
class _Read:
    """A file as a reading thread left it: content ids, the blobs it sealed, or why it failed."""

    size: int = 0
    sha256: str = ""
    ids: list[bytes] = field(default_factory=list)
    fresh: list[PreparedBlob] = field(default_factory=list)
    problem: str | None = None
    vanished: bool = False  # gone before it could be opened (a batch opens its files itself)
    generation: int = -1  # the index's generation when the ids were looked up
    data: bytes = b""  # a batched file's one chunk, until the batch looks its id up


@dataclass
class _Batch:
    """Small files of one folder, read together on a reading thread (`_Walker._read_batch`)."""

    dir_fd: int
    items: list[tuple[str, os.stat_result]] = field(default_factory=list)
    bytes: int = 0
    future: Future[list[_Read]] | None = None
    fd: int = -1  # the folder's descriptor duplicated for the task, which closes it


@dataclass(slots=True)
class _Pending:
    """An entry waiting for its turn in walk order: ready, or a file still being read."""

    path: str
    entry: Entry | PriorEntry | None
    read: Future[_Read] | None = None
    stat: os.stat_result | None = None
    parent: PriorEntry | None = None
    size: int = 0
    fd: int = -1
    blobs: int | None = None
    batch: _Batch | None = None
    slot: int = 0

    def waiting(self) -> bool:
        """A file whose read is not finished yet (or, batched, not even handed to a thread)."""
        if self.batch is not None:
            return self.batch.future is None or not self.batch.future.done()
        return self.read is not None and not self.read.done()

    def result(self) -> _Read:
        if self.batch is not None:
            assert self.batch.future is not None
            return self.batch.future.result()[self.slot]
        assert self.read is not None
        return self.read.result()


_SPECIAL = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class _Walker:
    """One files backup in progress: walk, compare with the parent, read, store, in walk order."""

    def __init__(
        self,
        repo: Repository,
        *,
        parent: Iterator[RawGroup],
        full: bool,
        progress: Callable[[int, int], None] | None,
        estimate: int,
        stored_groups: set[bytes] | None = None,
        not_stored: set[str] | None = None,
        list_threads: int = 0,
    ) -> None:
        self.repo = repo
        self.full = full
        self.check = full_check(repo) if full else None
        # An unchanged file is reused only if all its blobs are still stored: `checked_parent`
        # names those that are not as it reads the parent's groups.
        self.not_stored = not_stored if not_stored is not None else set()
        self.figures = _Figures()
        self.tree = TreeWriter(repo, self.check, stored_groups)
        # The parent's entries, one group at a time: the next one is `_items[_at]` of `_group`.
        self._groups = parent
        self._group: RawGroup | None = None
        self._items: list[dict[str, Any]] = []
        self._at = -1
        self._next_parent: dict[str, Any] | None = None
        self._next_key: list[str] | None = None
        self._advance_parent()
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._batch: _Batch | None = None
        self._threads = ThreadPoolExecutor(max_workers=workers() + 1, thread_name_prefix="read")
        self._walk = Walk(self.figures.warn, self._send_batch, threads=list_threads)
        self._local = threading.local()
        self._progress = progress
        self._estimate = estimate
        self.done_bytes = 0
        self._last_report = 0.0

    # ---- the parent snapshot, merged in walk order ------------------------------------------
    def _advance_parent(self) -> None:
        self._at += 1
        while self._at >= len(self._items):
            group = next(self._groups, None)
            if group is None:
                self._next_parent = None
                return
            self._group, self._items, self._at = group, group.items, 0
        self._next_parent = self._items[self._at]
        self._next_key = None  # made when needed: most lookups match the next entry at once

    def _parent_entry(self, path: str) -> PriorEntry | None:
        """The parent snapshot's entry at `path`, if it has one."""
        key: list[str] | None = None
        while self._next_parent is not None:
            if self._next_parent["path"] == path:
                assert self._group is not None
                found = PriorEntry(self._group, self._at, self._next_parent)
                self._advance_parent()
                return found
            if key is None:
                key = path_key(path)
            if self._next_key is None:
                self._next_key = path_key(self._next_parent["path"])
            if self._next_key > key:
                break
            self._advance_parent()  # gone from the folder since the parent snapshot
        return None

    # ---- the walk ----------------------------------------------------------------------------
    def run(self, root_fd: int) -> None:
        queue = self._queue
        try:
            for path, name, st, dir_fd in self._walk(root_fd):
                if not queue and self._reused(path, st):
                    continue
                self._visit(path, name, st, dir_fd)
                self._drain(block=self._in_flight > IN_FLIGHT_BYTES or len(queue) > IN_FLIGHT_FILES)
            while self._queue:
                self._drain(block=True)
        finally:
            self._walk.close()
            self._threads.shutdown(wait=True, cancel_futures=True)
            for pending in self._queue:  # only after an error: close what never got read
                if pending.read is not None and pending.read.cancelled():
                    os.close(pending.fd)
                batch = pending.batch
                if (
                    batch is not None
                    and batch.fd >= 0
                    and batch.future is not None
                    and batch.future.cancelled()
                ):
                    os.close(batch.fd)
                    batch.fd = -1

    def _reused(self, path: str, st: os.stat_result) -> bool:
        """The common case, taken first: a file that is the parent's next entry, unchanged, and
        nothing waiting ahead of it. It goes to the tree at once; anything else is `_visit`ed."""
        raw = self._next_parent
        if (
            raw is None
            or raw["path"] != path
            or self.full
            or not stat.S_ISREG(st.st_mode)
            or not unchanged(raw, st)
            or raw.get("mode") != stat.S_IMODE(st.st_mode)
            or raw.get("ctime_ns") != st.st_ctime_ns
            or path in self.not_stored
        ):
            return False
        group, at = self._group, self._at
        assert group is not None
        self._advance_parent()
        self._record_prior(group, at, raw)
        return True

    def _visit(self, path: str, name: str, st: os.stat_result, dir_fd: int) -> None:
        parent = self._parent_entry(path)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._visit_file(path, name, st, dir_fd, parent=parent)
            return
        common = {"path": path, "mode": stat.S_IMODE(mode), "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        if stat.S_ISDIR(mode):
            self.figures.dirs += 1
            self._found(Entry(type="dir", **common), parent)
        elif stat.S_ISLNK(mode):
            self._visit_link(path, name, dir_fd, common, parent=parent)
        else:
            what = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
            self.figures.warn(path, f"skipped: it is {what}, which a backup cannot hold")

    def _visit_link(
        self,
        path: str,
        name: str,
        dir_fd: int,
        common: dict[str, object],
        *,
        parent: PriorEntry | None,
    ) -> None:
        try:
            target = os.readlink(name, dir_fd=dir_fd)
            size = len(target.encode("utf-8"))
        except FileNotFoundError:
            self.figures.warn(path, "skipped: it vanished before it could be read")
            return
        except UnicodeEncodeError:
            self.figures.warn(path, "skipped: the link's target is not valid UTF-8")
            return
        except OSError as e:
            self.figures.warn(path, f"skipped: the link could not be read ({describe(e)})")
            return
        self.figures.symlinks += 1
        self._found(Entry(type="symlink", target=target, size=size, **common), parent)

    def _visit_file(
        self,
        path: str,
        name: str,
        st: os.stat_result,
        dir_fd: int,
        *,
        parent: PriorEntry | None,
    ) -> None:
        if not self.full and parent is not None and unchanged(parent.raw, st) and self._still_stored(parent):
            mode = stat.S_IMODE(st.st_mode)
            if parent.raw.get("mode") == mode and parent.raw.get("ctime_ns") == st.st_ctime_ns:
                self._ready(path, parent)
            else:  # a parent of before ctime_ns was recorded gets it now
                update = {"mode": mode, "ctime_ns": st.st_ctime_ns}
                self._ready(path, parent.model().model_copy(update=update))
            return
        if st.st_size <= CDC_MIN:
            self._add_to_batch(path, name, st, dir_fd, parent)
            return
        self._send_batch()  # files keep their turns: a batch ahead of this file is sent first
        try:
            fd = _open_file(name, dir_fd)
        except FileNotFoundError:
            self.figures.warn(path, "skipped: it vanished before it could be read")
            return
        except OSError as e:
            self._give_up(path, parent, f"it could not be read ({describe(e)})")
            return
        pending = _Pending(path, None, stat=st, parent=parent, size=st.st_size, fd=fd)
        if st.st_size > WHOLE_READ:
            # A large file is streamed here, its blobs stored as they come: memory stays bounded.
            done: Future[_Read] = Future()
            done.set_result(self._read(fd, st, stream=True))
            pending.read = done
        else:
            read_ahead(fd, st.st_size)  # the disk starts on it while the threads read what is ahead
            pending.read = self._threads.submit(self._read, fd, st, stream=False)
            self._in_flight += st.st_size
        self._queue.append(pending)

    def _add_to_batch(
        self, path: str, name: str, st: os.stat_result, dir_fd: int, parent: PriorEntry | None
    ) -> None:
        batch = self._batch
        if batch is not None and batch.dir_fd != dir_fd:
            self._send_batch()
            batch = None
        if batch is None:
            batch = self._batch = _Batch(dir_fd)
        pending = _Pending(path, None, stat=st, parent=parent, size=st.st_size, batch=batch)
        pending.slot = len(batch.items)
        batch.items.append((name, st))
        batch.bytes += st.st_size
        self._in_flight += st.st_size
        self._queue.append(pending)
        if len(batch.items) >= BATCH_FILES or batch.bytes >= BATCH_BYTES:
            self._send_batch()

    def _send_batch(self) -> None:
        """Hand the batch being filled to a reading thread, with its own copy of the folder's
        descriptor: the walk closes the folder's when it is through it, maybe before the read."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        try:
            batch.fd = os.dup(batch.dir_fd)
        except OSError as e:
            batch.future = Future()
            batch.future.set_result(
                [_Read(problem=f"it could not be read ({describe(e)})") for _ in batch.items]
            )
            return
        batch.future = self._threads.submit(self._read_batch, batch.fd, batch.items)

    def _read_batch(self, dir_fd: int, items: list[tuple[str, os.stat_result]]) -> list[_Read]:
        """Open and read small files of one folder, then look all their ids up at once."""
        # Every file of the batch is opened and its bytes asked for before the first is read: on a
        # cold disk the reads then overlap, where one after the other each waited for the last.
        opened: list[int | _Read] = []
        try:
            for name, st in items:
                try:
                    fd = _open_file(name, dir_fd)
                except FileNotFoundError:
                    opened.append(_Read(vanished=True))
                    continue
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise
                    opened.append(_Read(problem=f"it could not be read ({describe(e)})"))
                    continue
                read_ahead(fd, st.st_size)
                opened.append(fd)
            reads: list[_Read] = []
            for at, (opening, (_, st)) in enumerate(zip(opened, items, strict=True)):
                if isinstance(opening, _Read):
                    reads.append(opening)
                else:
                    opened[at] = _Read()  # `_read` closes it, whatever happens
                    reads.append(self._read(opening, st, stream=False, batched=True))
        finally:
            os.close(dir_fd)
            for left in opened:
                if isinstance(left, int):
                    os.close(left)
        with_data = [r for r in reads if r.problem is None and not r.vanished and r.ids]
        if self.check is not None:
            known = [self.check(r.ids[0]) for r in with_data]
            generation = -1
        else:
            generation = self.repo.index.generation
            known = self.repo.known_many([r.ids[0] for r in with_data])
        for read, k in zip(with_data, known, strict=True):
            read.generation = generation
            if not k:
                read.fresh.append(
                    self.repo.prepare(BLOB_DATA, read.data, read.ids[0], not is_compressed_format(read.data))
                )
            read.data = b""
        return reads

    def _still_stored(self, entry: PriorEntry) -> bool:
        """Whether every blob of a parent's file entry is in a pack that is there (see
        `checked_parent`, which read its group)."""
        return entry.path not in self.not_stored

    def _give_up(self, path: str, parent: PriorEntry | None, reason: str) -> None:
        """Warn about a file that could not be read; keep its parent's version if there is one."""
        is_file = parent is not None and parent.raw.get("type", "file") == "file"
        if parent is not None and is_file and not self._still_stored(parent):
            self.figures.warn(path, f"skipped: {reason}; the previous backup's version is in a missing pack")
        elif parent is not None and is_file:
            self.figures.warn(path, f"{reason}; the version from the previous backup is kept")
            self._ready(path, parent.model())
        else:
            self.figures.warn(path, f"skipped: {reason}")

    def _found(self, entry: Entry, parent: PriorEntry | None) -> None:
        """Queue a folder or a link; one equal to the parent's entry is queued as that entry, with
        its group, so that an unchanged group of the tree is reused whole."""
        if parent is not None and same(parent.raw, entry):
            self._ready(entry.path, parent)
        else:
            self._ready(entry.path, entry)

    def _ready(self, path: str, entry: Entry | PriorEntry) -> None:
        """Queue a finished entry: a new one, or the parent's (`PriorEntry`) unchanged."""
        self._queue.append(_Pending(path, entry))

    # ---- reading a file (on a reading thread, or here for a large one) -----------------------
    def _chunker(self) -> pyfastcdc.FastCDC:
        cdc: pyfastcdc.FastCDC | None = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = self._local.cdc = pyfastcdc.FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)
        return cdc

    def _read(self, fd: int, st: os.stat_result, *, stream: bool, batched: bool = False) -> _Read:
        """Read, hash and seal one file (closing `fd`); a batched file (one chunk) is only hashed,
        its chunk kept for the batch's look-up."""
        out = _Read(generation=-1 if batched or self.check else self.repo.index.generation)
        sha = hashlib.sha256()
        compress: bool | None = None
        try:
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise OSError(errno.EINVAL, "it is no longer a regular file")
                if stream:
                    f = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 - `fd` is closed below
                    chunks: Iterator[bytes | memoryview] = (c.data for c in self._chunker().cut_stream(f))
                else:
                    data = read_whole(fd, before.st_size)
                    chunks = (
                        iter([data])
                        if len(data) <= CDC_MIN
                        else (c.data for c in self._chunker().cut_buf(data))
                    )
                for chunk in chunks:
                    if compress is None:
                        compress = not is_compressed_format(chunk)
                    sha.update(chunk)
                    out.size += len(chunk)
                    blob_id = self.repo.sealer.blob_id(chunk)
                    out.ids.append(blob_id)
                    if batched:
                        out.data = bytes(chunk)
                    elif not (self.check or self.repo.has_blob)(blob_id):
                        blob = self.repo.prepare(BLOB_DATA, chunk, blob_id, compress)  # type: ignore[arg-type]
                        if stream:
                            self._add(blob)
                        else:
                            out.fresh.append(blob)
                after = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            out.problem = f"it could not be read ({describe(e)})"
            return out
        if (
            (before.st_ino, before.st_size, before.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns)
            or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
            or out.size != after.st_size
        ):
            out.problem = "it changed while it was read"
        out.sha256 = sha.hexdigest()
        return out

    def _add(self, blob: PreparedBlob) -> None:
        if self.repo.add(blob, self.check):
            self.figures.new_blobs += 1
            self.figures.new_bytes += blob.plain_length

    # ---- in walk order: finish entries and hand them to the tree -----------------------------
    def _drain(self, *, block: bool) -> None:
        while self._queue:
            head = self._queue[0]
            if head.waiting():
                if not block:
                    return
                if head.batch is not None and head.batch.future is None:
                    self._send_batch()
            self._queue.popleft()
            entry = head.entry if head.read is None and head.batch is None else self._finish_file(head)
            if entry is not None:
                self._record(entry, head.blobs)
            block = False  # one finished is enough to make room; go on only with what is done

    def _finish_file(self, pending: _Pending) -> Entry | None:
        assert pending.stat is not None
        read = pending.result()
        self._in_flight -= 0 if pending.size > WHOLE_READ else pending.size
        if read.vanished:
            self.figures.warn(pending.path, "skipped: it vanished before it could be read")
            return None
        if read.problem is not None:
            self._give_up(pending.path, pending.parent, read.problem)
            return None
        recheck = self._recheck(read.generation)
        for blob in read.fresh:
            if self.repo.add(blob, recheck):
                self.figures.new_blobs += 1
                self.figures.new_bytes += blob.plain_length
        self.figures.read_files += 1
        self.figures.read_bytes += read.size
        st = pending.stat
        fields = entry_blob_fields(self.repo, b"".join(read.ids), self.check)
        pending.blobs = len(read.ids)
        return Entry(
            path=pending.path,
            size=read.size,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            ctime_ns=st.st_ctime_ns,
            sha256=read.sha256,
            blobs=fields["blobs"],
            blob_lists=fields["blob_lists"],
        )

    def _recheck(self, generation: int) -> Callable[[bytes], bool] | None:
        """Has a blob a reading thread found new been stored since? If no packs were merged into
        the index since it looked, only the open pack and this run's packs can have it."""
        if self.check is not None:
            return self.check
        index = self.repo.index
        if generation == index.generation:
            return lambda i: self.repo.pending_blob(i) or index.in_recent(i)
        return None  # the repository's own test

    def _blob_count(self, blobs: list[str], blob_lists: list[str]) -> int:
        """How many chunks a reused entry has (a file read now counts the ids it read)."""
        count = len(blobs)
        for list_id in blob_lists:  # the index knows a list's length: no need to read it
            loc = self.repo.index.lookup(bytes.fromhex(list_id))
            count += loc.plain_length // ID_SIZE if loc is not None else 0
        return count

    def _record(self, entry: Entry | PriorEntry, blobs: int | None) -> None:
        if isinstance(entry, PriorEntry):
            self._record_prior(entry.group, entry.at, entry.raw)
            return
        if entry.type == "file":
            self._count_file(entry.size, blobs, entry.blobs, entry.blob_lists)
        self.tree.add(entry)
        self._report()

    def _record_prior(self, group: RawGroup, at: int, raw: dict[str, Any]) -> None:
        """Count and add to the tree the parent's entry `at` of `group`, unchanged."""
        if raw.get("type", "file") == "file":
            self._count_file(raw.get("size", 0), None, raw.get("blobs", []), raw.get("blob_lists", []))
        self.tree.add_prior(group, at)
        self._report()

    def _report(self) -> None:
        now = time.monotonic()
        if self._progress is not None and now - self._last_report >= PROGRESS_EVERY:
            self._last_report = now
            self._progress(self.done_bytes, max(self._estimate, self.done_bytes))

    def _count_file(self, size: int, blobs: int | None, ids: list[str], lists: list[str]) -> None:
        self.figures.files += 1
        self.figures.bytes += size
        self.figures.blobs += blobs if blobs is not None else self._blob_count(ids, lists)
        self.done_bytes += size


def _open_file(name: str, dir_fd: int) -> int:
    """Open a file of the walk for reading: one system call on the walking thread, which every
    other thread waits for; the reading thread checks what was opened (`_read`).

    O_NONBLOCK: if a FIFO was swapped in since the walk looked, opening it must not hang (reads of
    a regular file ignore the flag).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(name, flags | getattr(os, "O_NOATIME", 0), dir_fd=dir_fd)
    except PermissionError:  # O_NOATIME is for the file's owner only
        return os.open(name, flags, dir_fd=dir_fd)


def read_whole(fd: int, size: int) -> bytes:
    """The bytes of the regular file `fd`, which `fstat` said are `size`: one read for a file of
    that size (a file object would ask its size and position again and read a second time to find
    the end), more for one that is growing or shrinking as it is read."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data  # a read that asked for one byte more than it got ended at the end of the file
    parts = [data]
    while more := os.read(fd, max(size, 64 * KiB)):
        parts.append(more)
    return b"".join(parts)


def read_ahead(fd: int, size: int) -> None:
    """Ask the kernel to start reading the first `size` bytes of `fd` (the size the walk saw) into
    its cache, and return at once. A cold disk serves many reads in flight much faster than one at
    a time (see docs/performance.md, "Reading ahead on a cold disk"). Only a hint: if it cannot be
    given (not a regular file any more, a system without it), the read that follows is the same."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)


def open_root(root: Path) -> int:
    """The uploads folder, opened as a folder (the configured path may be a link to one)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise SourceError(
            f"the folder {root} does not exist; set CAPSULE_UPLOADS to the product images folder"
        ) from e
    except NotADirectoryError as e:
        raise SourceError(f"{root} is not a folder; set CAPSULE_UPLOADS to the product images folder") from e
    except PermissionError as e:
        raise SourceError(f"the folder {root} cannot be read by this user; run Capsule as its owner") from e


def store_files(
    repo: Repository,
    root: Path,
    *,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
    now: datetime | None = None,
) -> StoredFiles:
    """Walk `root` and store what changed since the last files snapshot of it; nothing is committed.

    Safe to run again after a crash: packs an interrupted run wrote are adopted into the index
    first, so their blobs are not stored again.
    """
    started = time.perf_counter()
    taken_at = now or datetime.now(UTC)
    source = str(root.resolve())
    root_fd = open_root(root)
    try:
        repo.ensure_index()
        adopt_unindexed_packs(repo)
        lost = missing_packs_warning(repo)
        parent = latest_snapshot(repo, "files", source)
        stored_before = repo.stored_bytes
        # Checked whether or not a pack is known to be missing: after `rebuild-index` none is, and
        # the parent may still name tree blobs that no pack holds.
        stored_groups = stored_tree(repo, parent[1]) if parent is not None and not full else None
        not_stored: set[str] = set()
        parent_entries = (
            checked_parent(repo, parent[1], not_stored)
            if parent is not None and stored_groups is not None
            else iter(())
        )
        walker = _Walker(
            repo,
            parent=parent_entries,
            stored_groups=stored_groups,
            full=full,
            progress=progress,
            estimate=parent[1].totals.bytes if parent is not None else 0,
            not_stored=not_stored,
            list_threads=0 if stored_groups is not None else LIST_THREADS,
        )
        if lost is not None:
            walker.figures.warnings.insert(0, lost)
            walker.figures.warning_count += 1
        walker.run(root_fd)
        tree = walker.tree.finish()
        repo.flush()
    finally:
        os.close(root_fd)
    repo.save_index_cache()  # the next command reads this index back instead of rebuilding it
    f = walker.figures
    if progress is not None:
        progress(walker.done_bytes, walker.done_bytes)
    return StoredFiles(
        source=source,
        taken_at=taken_at,
        tree=tree,
        parent=parent[0] if parent is not None else None,
        files=f.files,
        dirs=f.dirs,
        symlinks=f.symlinks,
        bytes=f.bytes,
        blobs=f.blobs,
        new_blobs=f.new_blobs,
        new_bytes=f.new_bytes,
        stored_bytes=repo.stored_bytes - stored_before,
        read_files=f.read_files,
        read_bytes=f.read_bytes,
        warnings=f.warnings,
        warning_count=f.warning_count,
        seconds=round(time.perf_counter() - started, 3),
    )


def commit_files(
    repo: Repository,
    stored: StoredFiles,
    *,
    full: bool,
    tags: list[str] | None = None,
    job_id: str | None = None,
    retry: bool = True,
) -> BackupResult:
    """Write the snapshot manifest for stored files (once per job, like `commit_database`)."""
    if job_id is not None and retry and (found := find_committed(repo, job_id, "files")) is not None:
        return found
    manifest = Manifest(
        kind="files",
        full=full,
        time=stored.taken_at,
        hostname=socket.gethostname(),
        source=stored.source,
        identity=SourceIdentity(host=socket.gethostname(), path=stored.source),
        parent=stored.parent,
        tags=tags or [],
        job_id=job_id,
        tree=stored.tree,
        warnings=stored.warnings,
        totals=Totals(
            files=stored.files,
            bytes=stored.bytes,
            blobs=stored.blobs,
            new_blobs=stored.new_blobs,
            new_bytes=stored.new_bytes,
            stored_bytes=stored.stored_bytes,
            read_files=stored.read_files,
            warnings=stored.warning_count,
            duration_seconds=stored.seconds,
        ),
    )
    snapshot_id = repo.save_snapshot(manifest)
    log.info(
        "files backed up",
        snapshot=snapshot_id[:12],
        files=stored.files,
        read_files=stored.read_files,
        new_blobs=stored.new_blobs,
        stored_bytes=stored.stored_bytes,
        warnings=stored.warning_count,
    )
    return BackupResult(snapshot_id, manifest)


def backup_files(
    repo: Repository,
    root: Path,
    *,
    full: bool = False,
    now: datetime,
    tags: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Store and commit in one call (tests and tools that need no job)."""
    stored = store_files(repo, root, full=full, progress=progress, now=now)
    return commit_files(repo, stored, full=full, tags=tags)
