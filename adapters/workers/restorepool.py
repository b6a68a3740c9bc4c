"""Restoring a file through the worker processes, which write the plaintexts into it themselves.

The parent looks locations up for thousands of blobs at once and builds each request as one numpy
array; a worker reads the packs, authenticates and decompresses every blob and writes the result at
its place in the file. Only a byte count comes back through the pipe. A thread of the parent reads
the finished prefix of the file back to compute its SHA-256, which must equal the manifest's.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from capsule.adapters.directio import AlignedBuffer, Readahead, SharedSlots, open_direct, read_into
from capsule.adapters.errors import NOT_INDEXED_ADVICE, BlobNotFound, IntegrityError
from capsule.adapters.repository.backends.storage import LocalPaths, local_paths
from capsule.adapters.repository.contentcheck import PageIdCheck
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.pack import BUNDLED
from capsule.adapters.repository.repo import Repository
from capsule.adapters.workers.sealpool import SealPool, open_request
from capsule.adapters.workers.sealworker import OPEN_ITEM
from capsule.domain.manifest import Entry

# Plaintext per request, in windows aligned to the file's start. A backup seals a database's new
# pages in bundles made within one 1 MiB block of the file (see sqlite/pagestore.BLOCK), so windows of
# whole blocks never split a bundle between two workers: each bundle is opened once.
REQUEST_BYTES = 2 * 1024 * 1024
IN_FLIGHT = 8
SLOTS = IN_FLIGHT + 4  # requests between a slot's write and the hash that frees it
SLOT_BYTES = 8 * 1024 * 1024  # a window and the longest chunk that can start in it
SYNC_EVERY = 64 * 1024 * 1024
HASH_READ = 1024 * 1024

OPEN_DTYPE = np.dtype(
    [
        ("path", "<u4"),
        ("offset", "<u8"),
        ("id", f"V{ID_SIZE}"),
        ("type", "u1"),
        ("comp", "u1"),
        ("length", "<u4"),
        ("plain", "<u4"),
        ("within", "<u4"),
    ]
)
assert OPEN_DTYPE.itemsize == OPEN_ITEM.size

Progress = Callable[[int, int], None]


class _Reader:
    """Reads the restored file back for its SHA-256, around the page cache where it can (directio)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.again: _Reader | None = None
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.direct = open_direct(str(path), os.O_RDONLY)
        self.buffer = AlignedBuffer()

    def hash_range(self, sha: hashlib._Hash | PageIdCheck, start: int, length: int) -> None:
        end = start + length
        while start < end:
            size = min(HASH_READ, end - start)
            try:
                sha.update(read_into(self.fd, self.direct, self.buffer, start, size))
            except EOFError as e:
                raise IntegrityError("the restored file is shorter than what the workers wrote") from e
            start += size

    def check_range(self, check: PageIdCheck, start: int, length: int) -> None:
        """The same bytes read again for the page ids' check, into a buffer of its own (the two
        run on different threads)."""
        if self.again is None:
            self.again = _Reader(self.path)
        self.again.hash_range(check, start, length)

    def close(self) -> None:
        os.close(self.fd)
        if self.direct is not None:
            os.close(self.direct)
        self.buffer.close()
        if self.again is not None:
            self.again.close()


class _Requests:
    """Turns groups of blob ids into open-and-write requests, one for each window of the file."""

    def __init__(self, repo: Repository, entry: Entry) -> None:
        self.repo = repo
        self.entry = entry
        self._paths: dict[int, str] = {}
        self.packs: LocalPaths = pack_files(repo)
        self.readahead = Readahead()

    def _path(self, number: int) -> str:
        path = self._paths.get(number)
        if path is None:
            pack_id = self.repo.index.pack_ids[number]
            path = self._paths[number] = str(self.packs.path_of("data", pack_id))
        return path

    def build(self, ids: bytes, start: int) -> list[tuple[bytes, int]]:
        """[(request body, plaintext bytes it writes)] for `ids` (end to end), which start at file
        offset `start`."""
        pos, packs, recs = self.repo.index.columns(ids)
        missing = np.flatnonzero(pos < 0)
        if len(missing):
            at = int(missing[0]) * ID_SIZE
            first = ids[at : at + 6].hex()
            raise BlobNotFound(
                f"{len(missing)} blob(s) of {self.entry.path} are in no index (first: {first}); "
                f"{NOT_INDEXED_ADVICE}"
            )
        # The workers will read these while the requests before them are being written: start now.
        self.readahead.ask(
            [(self._path(n), at, length) for n, at, length in _spans(packs, recs, Readahead.GAP)]
        )
        plain = recs["plain"].astype(np.int64)
        window = (start + np.cumsum(plain) - plain) // REQUEST_BYTES
        starts = [*np.flatnonzero(np.r_[True, window[1:] != window[:-1]]).tolist(), len(recs)]
        return [self._request(packs[a:b], recs[a:b]) for a, b in itertools.pairwise(starts)]

    def _request(self, packs: npt.NDArray[np.uint32], recs: npt.NDArray[np.void]) -> tuple[bytes, int]:
        numbers, inverse = np.unique(packs, return_inverse=True)
        # Members of one bundle that follow each other in its plaintext become one item: a single
        # slice of it. A worker then handles a few items a bundle instead of one for each page,
        # which it would unpack and walk only to join them again (see docs/performance.md,
        # "Bundle members joined into one item").
        bundled = np.isin(recs["comp"], BUNDLED)
        joined = (
            bundled[1:]
            & bundled[:-1]
            & (packs[1:] == packs[:-1])
            & (recs["offset"][1:] == recs["offset"][:-1])
            & (recs["within"][1:] == recs["within"][:-1] + recs["plain"][:-1])
        )
        first = np.flatnonzero(np.r_[True, ~joined])
        rows = np.empty(len(first), dtype=OPEN_DTYPE)
        rows["path"] = inverse[first]
        for field in ("offset", "id", "type", "comp", "length", "within"):
            rows[field] = recs[field][first]
        rows["plain"] = np.add.reduceat(recs["plain"].astype(np.uint64), first) if len(first) else 0
        paths = [self._path(int(n)) for n in numbers]
        return open_request(paths, rows.tobytes()), int(recs["plain"].sum())


def pack_files(repo: Repository) -> LocalPaths:
    """The repository's packs as files the workers can open; only a backend with local paths
    has them (callers restore through threads of their own process otherwise)."""
    packs = local_paths(repo.backend)
    if packs is None:
        where = repo.backend.describe()
        raise ValueError(f"the workers cannot open the packs of {where}: it has no local paths")
    return packs


def _spans(packs: npt.NDArray[np.uint32], recs: npt.NDArray[np.void], gap: int) -> list[tuple[int, int, int]]:
    """(pack number, offset, length) covering the stored blobs of `recs`, neighbours in one pack
    (less than `gap` bytes apart) joined: a few ranges where a file of many snapshots has
    thousands of blobs and bundles."""
    if not len(recs):
        return []
    order = np.lexsort((recs["offset"], packs))
    numbers = packs[order]
    starts = recs["offset"][order].astype(np.int64)
    ends = starts + recs["length"][order]
    new = np.r_[True, (numbers[1:] != numbers[:-1]) | (starts[1:] > ends[:-1] + gap)]
    first = np.flatnonzero(new)
    last_end = np.maximum.reduceat(ends, first)
    return list(
        zip(numbers[first].tolist(), starts[first].tolist(), (last_end - starts[first]).tolist(), strict=True)
    )


def write_with_pool(
    repo: Repository,
    pool: SealPool,
    entry: Entry,
    path: Path,
    *,
    fd: int,
    id_groups: Iterable[bytes],
    progress: Progress | None = None,
    page_ids: PageIdCheck | None = None,
) -> tuple[int, str]:
    """Fill the open, empty file `path` (descriptor `fd`) with `entry`; return (bytes, SHA-256).

    Each request's plaintext passes through a slot of memory shared with the workers, where the
    hasher thread reads it in file order; a request too long for a slot is read back from the file.
    With `page_ids` (a database entry without a SHA-256), a thread of its own checks the same bytes
    against the chunk ids too.
    """
    requests = _Requests(repo, entry)
    sha = hashlib.sha256()
    in_flight: deque[tuple[Future[memoryview], int, int, int | None]] = deque()
    hashed: deque[list[Future[None]]] = deque()  # for each request: its hash and its check
    written = synced = offset = 0
    slots = SharedSlots(SLOTS, SLOT_BYTES)
    reader = _Reader(path)
    # Where the workers write around the page cache, their writes are on their way to the disk
    # already, and a sync in the middle only makes them wait for the device's cache to empty
    # (see docs/performance.md, "No sync midway through a direct restore"). Through the page
    # cache, syncing early starts the write-back.
    write_back = reader.direct is None
    turn = itertools.cycle(range(slots.slots))
    try:
        with (
            ThreadPoolExecutor(1) as hasher,
            ThreadPoolExecutor(1) as checker,
            ThreadPoolExecutor(1) as syncer,
        ):

            def complete() -> None:
                nonlocal written, synced
                future, at, expected, slot_at = in_flight.popleft()
                (got,) = struct.unpack("<Q", future.result())
                if got != expected:
                    raise IntegrityError(
                        f"{entry.path}: a worker wrote {got} bytes where {expected} were due"
                    )
                # The prefix up to here is complete: hash it in order on the hasher's thread.
                if slot_at is None:
                    done = [hasher.submit(reader.hash_range, sha, at, got)]
                    if page_ids is not None:
                        done.append(checker.submit(reader.check_range, page_ids, at, got))
                else:
                    done = [hasher.submit(sha.update, slots.view(slot_at, got))]
                    if page_ids is not None:
                        done.append(checker.submit(page_ids.update, slots.view(slot_at, got)))
                hashed.append(done)
                written += got
                if written - synced >= SYNC_EVERY and write_back:
                    syncer.submit(os.fdatasync, fd)  # start the write-back early
                    synced = written
                if progress:
                    progress(written, entry.size)

            for ids in id_groups:
                if page_ids is not None:
                    page_ids.expect(ids)
                for body, plain in requests.build(ids, offset):
                    # A slot is free again once the request that used it last is hashed: requests
                    # take the slots in turn, and at most SLOTS requests are between the two.
                    while len(hashed) + len(in_flight) >= slots.slots:
                        if len(in_flight) >= IN_FLIGHT or not hashed:
                            complete()
                        else:
                            for h in hashed.popleft():
                                h.result()
                    slot_at = slots.at(next(turn)) if plain <= slots.slot_bytes else None
                    slot = (
                        (slots.path, slots.token, slot_at, slots.slot_bytes) if slot_at is not None else None
                    )
                    in_flight.append((pool.open_to(str(path), offset, body, slot), offset, plain, slot_at))
                    offset += plain
                    while len(in_flight) >= IN_FLIGHT:
                        complete()
            while in_flight:
                complete()
            for done in hashed:
                for h in done:
                    h.result()
            if page_ids is not None:
                page_ids.finish()
    finally:
        reader.close()
        slots.close()
        requests.readahead.close()
    return written, sha.hexdigest()
