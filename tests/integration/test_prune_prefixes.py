"""The plan keeps only the first 8 bytes of each used blob's id: a stored blob sharing them with a
used one looks used, so its pack is kept (never the other way round: no used blob is lost)."""

from __future__ import annotations

import os
from pathlib import Path

from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.usage import IdSet, UsageWalker
from tests.integration.prune_lab import KiB, Lab, prune


def _store_alone(repo: Repository, blob_id: bytes, data: bytes) -> str:
    """Store `data` under `blob_id` (a writer's misnaming: the only way to make two ids share a
    prefix) in a pack of its own, indexed; returns the pack."""
    before = set(repo.backend.list("data"))
    repo.add(repo.prepare(BLOB_DATA, data, blob_id=blob_id))
    repo.flush()
    (pack,) = set(repo.backend.list("data")) - before
    return pack


def test_a_blob_sharing_a_used_blobs_first_eight_bytes_keeps_its_pack(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    lab.write("a.bin", 40 * KiB)
    name = lab.backup_files()
    repo = lab.open()
    repo.load_index(use_cache=False)
    walked = IdSet()
    UsageWalker(repo, walked).add(repo.load_snapshot(name))
    raw = walked.tobytes()
    used_id = next(
        blob_id
        for blob_id in (raw[i : i + 32] for i in range(0, len(raw), 32))
        if (loc := repo.index.lookup(blob_id)) is not None and loc.blob_type == BLOB_DATA
    )
    twin = used_id[:8] + bytes(b ^ 0xFF for b in used_id[8:])  # the same prefix, another id
    stranger = bytes(b ^ 0xFF for b in used_id[:8]) + used_id[8:]  # the same tail only
    twin_pack = _store_alone(repo, twin, os.urandom(2 * KiB))
    stranger_pack = _store_alone(repo, stranger, os.urandom(2 * KiB))
    lab.age()
    packs_before = lab.packs() - {twin_pack, stranger_pack}

    plan, _ = prune(lab)

    assert stranger_pack in plan.delete, "an unused pack was not condemned: the check proves nothing"
    assert twin_pack not in plan.condemned, "a prefix shared with a used blob must keep the pack"
    assert plan.totals.missing_blobs == 0
    assert lab.packs() == {*packs_before, twin_pack} - {stranger_pack}
    kept = lab.open()
    kept.load_index(use_cache=False)
    assert kept.read_blob(used_id), "the used blob itself must stay readable"
