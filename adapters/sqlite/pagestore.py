"""Store a file's chunks through the sealing workers: ids first, then only the chunks that are new.

Two stages run as a pipeline: the workers hash a block of the file; the parent looks the ids up in
the index; the workers seal the chunks it does not have; the parent adds them to packs in file
order.

With the parent snapshot's ids (`ParentChunks`), a chunk whose id is the parent's at the same place
is not looked up: the parent's ids were checked as stored once, in one search, before the store
began. Only the ids that differ are looked up, those of several blocks together. Without a parent
(a first or a full backup) the file's SHA-256 is computed too, by a thread of its own reading the
file alongside; built on a parent, the entry leaves it out: a digest of the whole file would cost
a read and a hash of every page, while the pages' keyed ids already name every byte, and a restore
checks each of them (see `capsule.adapters.repository.contentcheck`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from capsule.adapters.filedigest import sha256_file
from capsule.adapters.repository.chunks import DIRECT_LIMIT, IdLists, StoreStats
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.repo import Repository
from capsule.adapters.workers.sealpool import SealPool, split_ids, split_sealed

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

BLOCK = 1024 * 1024
HASH_AHEAD = 8
SEAL_AHEAD = 4
LOOKUP_AHEAD = 8  # blocks whose differing ids may be looked up together, of those already hashed

Progress = Callable[[int, int], None]


class Growing(Protocol):
    """A file still being written, block by block, with its first block last (see `livecopy`)."""

    def ready(self, offset: int, length: int) -> bool: ...

    def wait(self, offset: int, length: int) -> None: ...

    def wait_done(self) -> None: ...


def _sha256_when_done(path: Path, growing: Growing | None, size: int) -> str:
    if growing is not None:
        growing.wait_done()
    return sha256_file(path, size)


class ParentChunks:
    """The parent snapshot's chunk ids, end to end, with which of them the repository still holds.

    `stored` comes from one search of the index when the backup starts (`Repository.known_joined`,
    the test a look-up of each id makes): an id the parent names is trusted only where its blob is
    indexed in a pack that is there. A parent that lost blobs (a pack gone, an index rebuilt
    without it) thus has those chunks looked up, and stored again, like any other. `lists` holds
    the ids of the parent's list blobs, each read back whole when the ids were.
    """

    def __init__(self, ids: bytes, stored: npt.NDArray[np.bool_], lists: frozenset[bytes]) -> None:
        import numpy as np  # noqa: PLC0415

        self.ids = ids
        self.matrix = np.frombuffer(ids, dtype=np.uint8).reshape(-1, ID_SIZE)
        self.stored = stored
        self.all_stored = bool(stored.all())
        self.lists = lists

    def differing(self, first: int, ids: bytes) -> tuple[list[int], int]:
        """For the ids end to end of chunks `first`, `first + 1`, ...: (where each is not the
        parent's stored id at its place: the ones to look up, how many differ from the parent's)."""
        import numpy as np  # noqa: PLC0415

        n = len(ids) // ID_SIZE
        if ids == self.ids[first * ID_SIZE : (first + n) * ID_SIZE]:  # the common case, in one compare
            stored = self.all_stored or bool(self.stored[first : first + n].all())
            return ([] if stored else np.flatnonzero(~self.stored[first : first + n]).tolist()), 0
        same = np.zeros(n, dtype=bool)
        m = max(0, min(n, len(self.matrix) - first))
        if m:
            new = np.frombuffer(ids, dtype=np.uint8, count=m * ID_SIZE).reshape(m, ID_SIZE)
            same[:m] = (new == self.matrix[first : first + m]).all(axis=1)
        changed = n - int(same.sum())
        same[:m] &= self.stored[first : first + m]
        return np.flatnonzero(~same).tolist(), changed


def _not_taken(indices: list[int], ids: list[bytes], taken: set[bytes]) -> list[int]:
    """`indices` without the ids in `taken`, which then holds the rest too: equal pages, in this
    block or in blocks still being sealed, are sealed once (a pack lists an id at most once)."""
    out = []
    for i in indices:
        if ids[i] not in taken:
            taken.add(ids[i])
            out.append(i)
    return out


def store_file_chunks(
    repo: Repository,
    pool: SealPool,
    path: Path,
    size: int,
    chunk: int,
    *,
    has_blob: Callable[[bytes], bool] | None = None,
    progress: Progress | None = None,
    growing: Growing | None = None,
    parent: ParentChunks | None = None,
) -> tuple[dict[str, list[str]], StoreStats, str | None]:
    """Store every `chunk`-sized piece of the file's first `size` bytes; return (manifest blob
    fields, figures, SHA-256 of those bytes, or None when built on a `parent`).

    With `growing`, the file is still being written: each block is taken once it is final, and the
    first block last. With `parent`, the parent snapshot's chunks of the same size, an id equal to
    the parent's stored one at its place is not looked up, and `StoreStats.changed` counts those
    that differ.
    """
    name = os.path.abspath(path)  # not resolve(): the copy may be an open, deleted file under /proc
    block = max(chunk, BLOCK - BLOCK % chunk)
    stats = StoreStats(changed=0 if parent is not None else None)
    offsets = deque(range(0, size, block))
    head: list[bytes] | None = None  # the first block's ids, when that block comes last
    if growing is not None and len(offsets) > 1:
        offsets.rotate(-1)
        head = []
    # Ids become list blobs as soon as 256 are known, so memory does not grow with the file.
    ids_out = IdLists(
        repo,
        direct=-(-size // chunk) <= DIRECT_LIMIT,
        has_blob=has_blob,
        head=-(-min(block, size) // chunk) if head is not None else 0,
        stored=parent.lists if parent is not None else (),
    )
    hashing: deque[tuple[int, int, Future[memoryview]]] = deque()
    sealing: deque[tuple[int, bytes, int, list[bytes], Future[memoryview] | None, int]] = deque()
    in_flight: set[bytes] = set()  # ids sent for sealing, not yet in the repository's open pack

    def known(ids: list[bytes]) -> list[bool]:
        if has_blob is not None:
            return [has_blob(i) for i in ids]
        return repo.known_many(ids)

    def submit_hashes() -> None:
        while len(hashing) < HASH_AHEAD and offsets:
            offset = offsets[0]
            length = min(block, size - offset)
            if growing is not None and not growing.ready(offset, length):
                if hashing:
                    return  # come back once a block in flight is done
                growing.wait(offset, length)
            offsets.popleft()
            hashing.append((offset, length, pool.hash(name, offset, length, chunk)))

    def finish_seal() -> None:
        offset, ids, length, new_ids, future, generation = sealing.popleft()
        if future is not None:
            header, sealed = split_sealed(future.result())
            added, plain = repo.add_run(new_ids, header, sealed, has_blob, index_generation=generation)
            in_flight.difference_update(new_ids)
            stats.new_blobs += added
            stats.new_bytes += plain
        if head is not None and offset == 0:
            head.append(ids)
        else:
            ids_out.extend(ids)
        stats.blobs += len(ids) // ID_SIZE
        stats.bytes += length
        if progress is not None:
            progress(stats.bytes, size)

    digest: Future[str] | None = None

    def to_look_up(offset: int, raw: bytes) -> list[int]:
        if parent is None:
            return list(range(len(raw) // ID_SIZE))
        indices, changed = parent.differing(offset // chunk, raw)
        assert stats.changed is not None
        stats.changed += changed
        return indices

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        if parent is None:
            # A growing file's first block is final only at its end, and the digest starts there.
            digest = hasher.submit(_sha256_when_done, path, growing, size)
        submit_hashes()
        while hashing:
            # The blocks already hashed are looked up together: one search for their differing ids.
            batch = [hashing.popleft()]
            while hashing and len(batch) < LOOKUP_AHEAD and hashing[0][2].done():
                batch.append(hashing.popleft())
            replies = [(offset, length, bytes(future.result())) for offset, length, future in batch]
            submit_hashes()
            # Blocks sealed earlier are added to packs before the search, not between it and the
            # sealing of this batch: an id found new must still be new (or in flight) when sealed.
            while len(sealing) > SEAL_AHEAD:
                finish_seal()
            generation = repo.index.generation
            asked = [(offset, length, raw, to_look_up(offset, raw)) for offset, length, raw in replies]
            query = [raw[i * ID_SIZE : (i + 1) * ID_SIZE] for _, _, raw, look in asked for i in look]
            answers = iter(known(query) if query else [])
            for offset, length, raw, look in asked:
                ids = split_ids(raw) if look else []
                unknown = [i for i in look if not next(answers)]
                indices = _not_taken(unknown, ids, in_flight)
                new_ids = [ids[i] for i in indices]
                # All new (a first backup): the hash reply already holds the ids end to end.
                new_raw = raw if len(indices) == len(raw) // ID_SIZE else b"".join(new_ids)
                block_at = (offset, length, chunk)
                seal = (
                    pool.seal_pieces(
                        name, BLOB_DATA, True, block_at, indices=indices, ids=new_raw, bundle=repo.bundles
                    )
                    if indices
                    else None
                )
                sealing.append((offset, raw, length, new_ids, seal, generation))
        while sealing:
            finish_seal()
        fields = ids_out.finish(b"".join(head) if head is not None else None)
        return fields, stats, digest.result() if digest is not None else None
