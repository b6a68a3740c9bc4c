"""Storing a stream of chunks: hash, deduplicate, compress, seal and pack, two cores at a time.

Work is split in batches: a pool of threads (zstd, AES-GCM and BLAKE3 release the GIL) computes ids
and seals the chunks the repository does not have; the caller's thread adds them to packs in order.
Only a few batches are in flight, so memory stays bounded whatever the size of the input.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from capsule.adapters.errors import NOT_INDEXED_ADVICE, BlobNotFound, IntegrityError
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.pack import BLOB_DATA, BLOB_LIST
from capsule.adapters.repository.repo import PreparedBlob, Repository

IN_FLIGHT = 4
LIST_FANOUT = 256  # ids per list blob: 8 KiB, so an unchanged stretch of a file dedupes
LIST_BATCH = 32  # list blobs looked up together as a file's ids arrive
DIRECT_LIMIT = 64  # up to this many blobs an entry lists them directly


@dataclass
class StoreStats:
    blobs: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    bytes: int = 0
    changed: int | None = None
    """Blobs whose id differs from the parent snapshot's at the same place, when one was compared."""


def workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ChunkStore:
    """Feeds batches of chunks to the repository through a thread pool."""

    def __init__(self, repo: Repository, has_blob: Callable[[bytes], bool] | None = None) -> None:
        self.repo = repo
        self.has_blob = has_blob or repo.has_blob
        self._custom_check = has_blob is not None
        self.stats = StoreStats()
        self._pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="seal")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recheck(self, generation: int) -> Callable[[bytes], bool]:
        """Has a blob sealed as new been stored since the sealing thread asked the index?"""
        if self._custom_check:
            return self.has_blob
        index = self.repo.index
        if index.generation == generation:  # nothing merged since: the open pack or recent packs
            return lambda i: self.repo.pending_blob(i) or index.in_recent(i)
        return self.repo.has_blob

    def _seal_batch(self, chunks: list[bytes], compress: bool) -> tuple[list[bytes], list[PreparedBlob], int]:
        generation = self.repo.index.generation
        ids = [self.repo.sealer.blob_id(c) for c in chunks]
        if self._custom_check:
            known = [self.has_blob(i) for i in ids]
        else:
            in_index = self.repo.index.contains_many(ids)
            known = [k or self.repo.pending_blob(i) for k, i in zip(in_index, ids, strict=True)]
        fresh = [
            self.repo.prepare(BLOB_DATA, c, i, compress)
            for c, i, k in zip(chunks, ids, known, strict=True)
            if not k
        ]
        return ids, fresh, generation

    def store_batches(
        self,
        batches: Iterable[list[bytes]],
        compress: bool = True,
        on_batch: Callable[[list[bytes], list[bytes]], None] | None = None,
    ) -> Iterator[bytes]:
        """Store every chunk of every batch; yield the chunk ids in input order.

        `on_batch(chunks, ids)` runs on the caller's thread for each batch in order (for hashing
        the whole stream or reporting progress).
        """
        pending: deque[tuple[list[bytes], Future[tuple[list[bytes], list[PreparedBlob], int]]]] = deque()

        def drain_one() -> Iterator[bytes]:
            chunks, fut = pending.popleft()
            ids, fresh, generation = fut.result()
            recheck = self._recheck(generation)
            for blob in fresh:
                if self.repo.add(blob, recheck):
                    self.stats.new_blobs += 1
                    self.stats.new_bytes += blob.plain_length
            self.stats.blobs += len(ids)
            self.stats.bytes += sum(len(c) for c in chunks)
            if on_batch is not None:
                on_batch(chunks, ids)
            yield from ids

        for batch in batches:
            pending.append((batch, self._pool.submit(self._seal_batch, batch, compress)))
            if len(pending) >= IN_FLIGHT:
                yield from drain_one()
        while pending:
            yield from drain_one()


def store_id_lists(
    repo: Repository,
    ids: bytes,
    has_blob: Callable[[bytes], bool] | None = None,
    stored: Container[bytes] = (),
) -> list[str]:
    """Store concatenated `ids` as list blobs of LIST_FANOUT ids each; return their ids (hex).

    A list the repository has already is not sealed at all: an hourly backup's lists are mostly
    the last one's, and sealing each (a random nonce, AES-GCM) only to drop it cost more than
    looking it up. A list in `stored` (the parent snapshot's lists, read back whole a moment ago)
    is not even looked up; the others are looked up together, in one search.
    """
    step = LIST_FANOUT * ID_SIZE
    parts = [ids[start : start + step] for start in range(0, len(ids), step)]
    blob_ids = [repo.sealer.blob_id(part) for part in parts]
    todo = [k for k, blob_id in enumerate(blob_ids) if blob_id not in stored]
    if todo:
        asked = [blob_ids[k] for k in todo]
        generation = repo.index.generation
        known = [has_blob(i) for i in asked] if has_blob is not None else repo.known_many(asked)
        check = has_blob or _added_since(repo, generation)
        for k, found in zip(todo, known, strict=True):
            if not found:
                repo.add(repo.prepare(BLOB_LIST, parts[k], blob_ids[k], compress=False), check)
    return [blob_id.hex() for blob_id in blob_ids]


def _added_since(repo: Repository, generation: int) -> Callable[[bytes], bool]:
    """For ids the repository did not have at index `generation`: has this run stored one since
    (a list twice in one file)? Only its open pack and recent packs can hold it, unless a merge
    happened since."""
    index = repo.index

    def added(blob_id: bytes) -> bool:
        if index.generation != generation:
            return repo.has_blob(blob_id)
        return repo.pending_blob(blob_id) or index.in_recent(blob_id)

    return added


class IdLists:
    """Collects a file's blob ids in order, storing full runs of LIST_FANOUT as list blobs, up to
    LIST_BATCH at a time.

    With `head`, the file's first `head` ids arrive last, through `finish`: the ids that share
    their list blobs are held back until then, and every later list is stored as it fills.
    `stored` (see `store_id_lists`) holds the ids of lists known to be stored already.
    """

    def __init__(
        self,
        repo: Repository,
        direct: bool,
        has_blob: Callable[[bytes], bool] | None,
        head: int = 0,
        stored: Container[bytes] = (),
    ) -> None:
        self.repo = repo
        self.direct = direct
        self.has_blob = has_blob
        self.stored = stored
        self.head = head
        self.held = bytearray()
        self.hold = (-(-head // LIST_FANOUT) * LIST_FANOUT - head) * ID_SIZE
        self.buffer = bytearray()
        self.lists: list[str] = []

    def extend(self, ids: list[bytes] | bytes | memoryview) -> None:
        data = b"".join(ids) if isinstance(ids, list) else ids
        if self.hold:
            taken = data[: self.hold]
            self.held += taken
            self.hold -= len(taken)
            data = data[len(taken) :]
        self.buffer.extend(data)
        step = LIST_FANOUT * ID_SIZE
        if not self.direct and len(self.buffer) >= step * LIST_BATCH:
            whole = len(self.buffer) - len(self.buffer) % step
            self.lists.extend(self._store(bytes(self.buffer[:whole])))
            del self.buffer[:whole]

    def _store(self, ids: bytes) -> list[str]:
        return store_id_lists(self.repo, ids, self.has_blob, self.stored)

    def finish(self, head: list[bytes] | bytes | None = None) -> dict[str, list[str]]:
        first = b"".join(head) if isinstance(head, list) else (head or b"")
        if len(first) != self.head * ID_SIZE:
            raise ValueError(f"expected {self.head} leading ids, got {len(first) // ID_SIZE}")
        front = first + bytes(self.held)
        if self.direct:
            return entry_blob_fields(self.repo, front + bytes(self.buffer), self.has_blob)
        lists = self._store(front) if front else []
        lists += self.lists
        lists += self._store(bytes(self.buffer))
        return {"blobs": [], "blob_lists": lists}


def load_id_list(repo: Repository, list_id: str) -> bytes:
    """The concatenated data blob ids a list blob holds."""
    return read_id_lists(repo, [list_id])[0]


def read_id_lists(repo: Repository, list_ids: list[str]) -> list[bytes]:
    """The concatenated ids each list blob holds, the lists looked up together and read in runs.

    A look-up of one id pays for a whole vectorised search, so looking each list up alone added up
    over the lists of a large database (see docs/performance.md, "A file's list blobs looked up
    together").
    """
    blob_ids = [bytes.fromhex(i) for i in list_ids]
    items = []
    for blob_id, loc in zip(blob_ids, repo.index.locate_many(blob_ids), strict=True):
        if loc is None:
            raise BlobNotFound(f"blob {blob_id.hex()[:12]} is in no index; {NOT_INDEXED_ADVICE}")
        if loc.blob_type != BLOB_LIST:
            raise IntegrityError(f"blob {blob_id.hex()[:12]} is named as a list but holds data")
        items.append((blob_id, loc))
    bodies = repo.read_blobs(items)
    for blob_id, body in zip(blob_ids, bodies, strict=True):
        if len(body) % ID_SIZE:
            raise IntegrityError(f"list blob {blob_id.hex()[:12]} has a broken length")
    return bodies


def split_ids(ids: bytes) -> list[bytes]:
    return [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]


def load_id_lists(repo: Repository, list_ids: list[str]) -> list[bytes]:
    return split_ids(b"".join(read_id_lists(repo, list_ids)))


def entry_blob_fields(
    repo: Repository, ids: bytes, has_blob: Callable[[bytes], bool] | None = None
) -> dict[str, list[str]]:
    """Manifest fields for concatenated content `ids`: listed directly when few, through lists when many."""
    if len(ids) <= DIRECT_LIMIT * ID_SIZE:
        return {"blobs": [i.hex() for i in split_ids(ids)], "blob_lists": []}
    return {"blobs": [], "blob_lists": store_id_lists(repo, ids, has_blob)}
