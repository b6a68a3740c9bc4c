"""Store a file's chunks through the sealing workers: ids first, then only the chunks that are new.

Two stages run as a pipeline: the workers hash a block of the file; the parent looks the ids up in
the index; the workers seal the chunks it does not have; the parent adds them to packs in file
order. The file's SHA-256 is computed by a thread of its own reading the file alongside.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from capsule.adapters.repository.chunks import DIRECT_LIMIT, IdLists, StoreStats
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.repo import Repository
from capsule.adapters.workers.sealpool import SealPool, split_ids, split_sealed

BLOCK = 1024 * 1024
HASH_AHEAD = 8
SEAL_AHEAD = 4

Progress = Callable[[int, int], None]


class Growing(Protocol):
    """A file still being written, block by block, with its first block last (see `livecopy`)."""

    def ready(self, offset: int, length: int) -> bool: ...

    def wait(self, offset: int, length: int) -> None: ...

    def wait_done(self) -> None: ...


def sha256_file(path: Path, size: int | None = None) -> str:
    """The SHA-256 of the file's first `size` bytes (all of them if None)."""
    sha = hashlib.sha256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    left = -1 if size is None else size  # -1: to the end
    with open(path, "rb", buffering=0) as f:
        while left:
            n = f.readinto(view[: BLOCK if left < 0 else min(BLOCK, left)])
            if not n:
                break
            sha.update(view[:n])
            if left > 0:
                left -= n
    if left > 0:
        raise OSError(f"{path} is shorter than expected")
    return sha.hexdigest()


def _sha256_when_done(path: Path, growing: Growing | None, size: int) -> str:
    if growing is not None:
        growing.wait_done()
    return sha256_file(path, size)


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
) -> tuple[dict[str, list[str]], StoreStats, str]:
    """Store every `chunk`-sized piece of the file's first `size` bytes; return (manifest blob
    fields, figures, SHA-256 of those bytes).

    With `growing`, the file is still being written: each block is taken once it is final, and the
    first block last.
    """
    name = os.path.abspath(path)  # not resolve(): the copy may be an open, deleted file under /proc
    block = max(chunk, BLOCK - BLOCK % chunk)
    stats = StoreStats()
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
    )
    hashing: deque[tuple[int, int, Future[memoryview]]] = deque()
    sealing: deque[tuple[int, list[bytes], int, list[bytes], Future[memoryview] | None, int]] = deque()
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
            head.extend(ids)
        else:
            ids_out.extend(ids)
        stats.blobs += len(ids)
        stats.bytes += length
        if progress is not None:
            progress(stats.bytes, size)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        # A growing file's first block is final only at its end, and the digest starts there.
        digest = hasher.submit(_sha256_when_done, path, growing, size)
        submit_hashes()
        while hashing:
            offset, length, future = hashing.popleft()
            reply = future.result()
            ids = split_ids(reply)
            submit_hashes()
            generation = repo.index.generation
            indices = _not_taken([i for i, k in enumerate(known(ids)) if not k], ids, in_flight)
            new_ids = [ids[i] for i in indices]
            # All new (a first backup): the hash reply already holds the ids end to end.
            raw = bytes(reply) if len(indices) == len(ids) else b"".join(new_ids)
            block_at = (offset, length, chunk)
            seal = (
                pool.seal_pieces(
                    name, BLOB_DATA, True, block_at, indices=indices, ids=raw, bundle=repo.bundles
                )
                if indices
                else None
            )
            sealing.append((offset, ids, length, new_ids, seal, generation))
            while len(sealing) > SEAL_AHEAD:
                finish_seal()
        while sealing:
            finish_seal()
        return ids_out.finish(head), stats, digest.result()
