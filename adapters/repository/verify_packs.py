"""The data pass of `verify --read-data`: every pack read once and checked, on every core.

Each pack goes whole to `packcheck.check_pack`, with the blobs the index places in it as rows built
from the index's records by numpy (no Python object per blob in this process). Where the packs are
local files, worker processes check them side by side, a few packs ahead of the results
taken here; the interpreter lock would otherwise keep the per-member BLAKE3 and the bundles'
decompression on one core (see docs/performance.md, "verify --read-data: where the time went").
Elsewhere, or for a small repository, where starting the workers would cost more than they save,
this process checks them with the same code.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from contextlib import closing

import numpy as np
import zstandard

from capsule.adapters.files.verify_contents import Contents
from capsule.adapters.repository.backends.storage import local_paths
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.pack import BUNDLE_NONE, BUNDLE_ZSTD, BUNDLED
from capsule.adapters.repository.packcheck import ROW, PackCheck, check_pack, parse_rows
from capsule.adapters.repository.repo import Repository
from capsule.adapters.workers.sealpool import SealPool, default_workers
from capsule.domain.errors import CapsuleError

CHECK_DTYPE = np.dtype(
    [
        ("offset", "<u8"),
        ("id", f"V{ID_SIZE}"),
        ("type", "u1"),
        ("comp", "u1"),
        ("length", "<u4"),
        ("plain", "<u4"),
        ("within", "<u4"),
        ("want", "u1"),
    ]
)
assert CHECK_DTYPE.itemsize == ROW.size
# Below this many bytes of packs, this process checks them itself: starting the workers costs
# about as much as checking that much.
WORKERS_FROM_BYTES = 64 * 1024 * 1024
AHEAD_PER_WORKER = 2  # packs sent to a worker before its first result is taken


def _indexed(repo: Repository) -> Iterator[tuple[str, bytes]]:
    """(pack name, rows in pack order) for every pack some index names, in pack order; every blob
    sealed alone is wanted (bundle members are database pages, never a file's only blob)."""
    index = repo.index
    for recs in index.pack_batches():
        bounds = np.flatnonzero(np.diff(recs["pack"])) + 1
        for unsorted in np.split(recs, bounds) if len(recs) else []:
            group = unsorted[np.lexsort((unsorted["within"], unsorted["offset"]))]
            rows = np.zeros(len(group), dtype=CHECK_DTYPE)
            for name in ("offset", "id", "type", "comp", "length", "plain", "within"):
                rows[name] = group[name]
            rows["want"] = (group["comp"] != BUNDLE_ZSTD) & (group["comp"] != BUNDLE_NONE)
            yield index.pack_ids[int(group[0]["pack"])], rows.tobytes()


def check_packs(repo: Repository, workers: int | None = None) -> Generator[tuple[str, PackCheck], None, None]:
    """(pack name, what its check found) for every pack stored, those no index names last.

    It needs nothing from the structure pass, so the two may run at once: the plaintext of every
    blob sealed alone comes back as its length and SHA-256, whichever files turn out to need it.

    `workers`: None chooses by the packs' size and the backend, 0 checks them in this process.
    """
    sizes = {name: repo.backend.size("data", name) for name in repo.backend.list("data")}
    left = set(sizes)

    def jobs() -> Iterator[tuple[str, bytes]]:
        for name, rows in _indexed(repo):
            if name in left:  # a missing pack is reported by the structure check
                left.discard(name)
                yield name, rows
        for name in sorted(left):  # packs no index names: checked by what their header lists
            yield name, b""

    paths = local_paths(repo.backend)
    if workers is None:
        workers = default_workers() if sum(sizes.values()) >= WORKERS_FROM_BYTES else 0
    if paths is None or workers == 0:
        decompressor = zstandard.ZstdDecompressor()
        for name, rows in jobs():
            data = repo.backend.read("data", name)
            yield name, check_pack(repo.sealer, decompressor, name, data, parse_rows(rows))
        return
    with SealPool(repo.master_key, repo.compression_level, workers) as pool:
        pending: deque[tuple[str, Future[memoryview]]] = deque()
        for name, rows in jobs():
            pending.append((name, pool.check_pack(str(paths.path_of("data", name)), name, rows)))
            if len(pending) >= AHEAD_PER_WORKER * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _result(item: tuple[str, Future[memoryview]]) -> tuple[str, PackCheck]:
    name, future = item
    return name, PackCheck.from_bytes(future.result())


def all_packs(
    repo: Repository, workers: int | None, progress: Callable[[int, int], None] | None, stop: threading.Event
) -> list[tuple[str, PackCheck]]:
    """Every pack's check, in the order `check_packs` gives them (until `stop` is set)."""
    total = sum(1 for _ in repo.backend.list("data"))
    checks = []
    # closed here, not by the garbage collector wherever it finds it: closing stops the workers
    with closing(check_packs(repo, workers)) as packs:
        for done, (name, check) in enumerate(packs, 1):
            if stop.is_set():
                break
            checks.append((name, check))
            if progress:
                progress(min(done, total), total)
    return checks


def check_bundled_files(repo: Repository, contents: Contents, bad: dict[bytes, str]) -> None:
    """Check the files whose only blob is a bundle member: the pack pass hands back the plaintext
    of blobs sealed alone only. Capsule bundles database pages alone; another writer may not."""
    ids = [i for i in contents.single if i not in contents.checked and i not in bad]
    for blob_id, loc in zip(ids, repo.index.locate_many(ids), strict=True):
        if loc is None or loc.compression not in BUNDLED:
            continue  # not indexed, or in a pack that is missing or short: reported already
        try:
            data = repo.read_blob(blob_id, loc)
        except (CapsuleError, OSError):
            continue  # a blob that cannot be read is reported with its pack
        contents.found(blob_id, len(data), hashlib.sha256(data).hexdigest())
