"""Rebuild the index from the packs alone: every pack carries a sealed list of its blobs."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import structlog

from capsule.adapters.errors import ObjectNotFound
from capsule.adapters.repository.index import encode_index, records
from capsule.adapters.repository.pack import MAX_HEADER_GUESS, TRAILER, PackedBlob, parse_header
from capsule.adapters.repository.repo import INDEX_FLUSH_BLOBS, Repository
from capsule.domain.errors import CapsuleError

log = structlog.get_logger(__name__)


def read_pack_header(repo: Repository, name: str) -> list[PackedBlob]:
    size, tail = repo.backend.read_tail("data", name, MAX_HEADER_GUESS)
    header_len = int.from_bytes(tail[-TRAILER.size : -4], "little") if len(tail) >= 8 else 0
    if header_len + TRAILER.size > len(tail) and header_len + TRAILER.size <= size:
        size, tail = repo.backend.read_tail("data", name, header_len + TRAILER.size)
    return parse_header(repo.sealer, tail, size, name)


def rebuild_index(repo: Repository) -> tuple[int, int, list[str]]:
    """Write new index files for every readable pack, then remove the old ones.

    Returns (packs indexed, blobs indexed, packs whose header could not be read). The caller holds
    an exclusive lock: nobody may add an index file while the old ones are removed.
    """
    old = sorted(repo.backend.list("index"))
    batch: dict[str, npt.NDArray[np.void]] = {}
    in_batch = packs = blobs = 0
    unreadable = []
    for name in sorted(repo.backend.list("data")):
        try:
            header = read_pack_header(repo, name)
        except (CapsuleError, OSError) as e:
            log.error("pack header unreadable; its blobs stay unindexed", pack=name[:12], error=str(e))
            unreadable.append(name)
            continue
        batch[name] = records(header)
        packs += 1
        blobs += len(header)
        in_batch += len(header)
        if in_batch >= INDEX_FLUSH_BLOBS:
            repo.save_sealed("index", encode_index(batch, version=repo.version))
            batch, in_batch = {}, 0
    if batch:
        repo.save_sealed("index", encode_index(batch, version=repo.version))
    for name in old:
        repo.backend.remove("index", name)
    return packs, blobs, unreadable


ADOPT_WITHIN = 3600.0
"""Only packs written this recently (seconds) are adopted: see `adopt_unindexed_packs`."""


def adopt_unindexed_packs(repo: Repository, now: float | None = None) -> int:
    """Index the packs that no index file names (a backup died before writing its index).

    Their blobs are then found like any others, so a backup run again does not store them a
    second time. Only packs written within ADOPT_WITHIN are adopted: an older one may be a pack a
    prune has just dropped from the index and is about to delete (prune condemns only packs older
    than twice that, see prune.py), and a backup must never build on it. A backup run again later
    than that stores its blobs again; the unindexed pack is then garbage for the next prune.
    Returns how many packs were adopted; unreadable ones are left for `verify`.
    """
    repo.ensure_index()
    indexed = set(repo.index.pack_ids)
    batch: dict[str, npt.NDArray[np.void]] = {}
    since = (time.time() if now is None else now) - ADOPT_WITHIN
    for name in sorted(set(repo.backend.list("data")) - indexed):
        try:
            if repo.backend.stat("data", name).modified < since:
                continue
        except ObjectNotFound:
            continue
        try:
            header = read_pack_header(repo, name)
        except (CapsuleError, OSError) as e:
            log.warning("a pack that no index names cannot be read", pack=name[:12], error=str(e))
            continue
        batch[name] = records(header)
    if batch:
        repo.save_index_file(batch)
        for name, recs in batch.items():
            repo.index.add_pack(name, recs)
        repo.index.freeze()
        log.info("adopted packs left by an interrupted backup", packs=len(batch))
    return len(batch)
