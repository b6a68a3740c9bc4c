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

from adapters.chunks import DIRECT_LIMIT, IdLists, StoreStats
from adapters.repository.pack import BLOB_DATA
from adapters.repository.repo import Repository
from adapters.sealpool import SealPool, split_ids, split_sealed

BLOCK = 1024 * 1024
HASH_AHEAD = 8
SEAL_AHEAD = 4

Progress = Callable[[int, int], None]


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            sha.update(block)
    return sha.hexdigest()


def store_file_chunks(
    repo: Repository,
    pool: SealPool,
    path: Path,
    size: int,
    chunk: int,
    *,
    has_blob: Callable[[bytes], bool] | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, list[str]], StoreStats, str]:
    """Store every `chunk`-sized piece of the file; return (manifest blob fields, figures, SHA-256)."""
    name = os.path.abspath(path)  # not resolve(): the copy may be an open, deleted file under /proc
    block = max(chunk, BLOCK - BLOCK % chunk)
    stats = StoreStats()
    # Ids become list blobs as soon as 256 are known, so memory does not grow with the file.
    ids_out = IdLists(repo, direct=-(-size // chunk) <= DIRECT_LIMIT, has_blob=has_blob)
    hashing: deque[tuple[int, int, Future[bytes]]] = deque()
    sealing: deque[tuple[list[bytes], int, list[tuple[int, int, bytes]], Future[bytes] | None, int]] = deque()
    offsets = iter(range(0, size, block))

    def known(ids: list[bytes]) -> list[bool]:
        if has_blob is not None:
            return [has_blob(i) for i in ids]
        in_index = repo.index.contains_many(ids)
        return [k or repo.pending_blob(i) for k, i in zip(in_index, ids, strict=True)]

    def recheck(generation: int) -> Callable[[bytes], bool]:
        if has_blob is not None:
            return has_blob
        if repo.index.generation == generation:  # nothing merged since the look-up
            return lambda i: repo.pending_blob(i) or repo.index.in_recent(i)
        return repo.has_blob

    def submit_hashes() -> None:
        while len(hashing) < HASH_AHEAD:
            offset = next(offsets, None)
            if offset is None:
                return
            length = min(block, size - offset)
            hashing.append((offset, length, pool.hash(name, offset, length, chunk)))

    def finish_seal() -> None:
        ids, length, items, future, generation = sealing.popleft()
        if future is not None:
            table, sealed = split_sealed(future.result())
            added, plain = repo.add_run(
                [i for _, _, i in items], BLOB_DATA, table, sealed, recheck(generation)
            )
            stats.new_blobs += added
            stats.new_bytes += plain
        ids_out.extend(ids)
        stats.blobs += len(ids)
        stats.bytes += length
        if progress is not None:
            progress(stats.bytes, size)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
        digest = hasher.submit(sha256_file, path)
        submit_hashes()
        while hashing:
            offset, length, future = hashing.popleft()
            ids = split_ids(future.result())
            submit_hashes()
            generation = repo.index.generation
            items = [
                (offset + i * chunk, min(chunk, length - i * chunk), blob_id)
                for i, (blob_id, k) in enumerate(zip(ids, known(ids), strict=True))
                if not k
            ]
            seal = pool.seal(name, BLOB_DATA, True, items) if items else None
            sealing.append((ids, length, items, seal, generation))
            while len(sealing) > SEAL_AHEAD:
                finish_seal()
        while sealing:
            finish_seal()
        return ids_out.finish(), stats, digest.result()
