"""Copying blobs out of condemned packs into new ones, for prune's repack phase.

A blob is copied as it is stored (a bundle whole, its members' entries as pack.py lays them out):
nothing is decrypted to be sealed again, but every blob that is needed is opened and checked first,
so that a damaged one is never carried over.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import structlog

from capsule.adapters.errors import ObjectNotFound
from capsule.adapters.repository.index import BlobLocation, encode_index, header_records
from capsule.adapters.repository.pack import HEADER_ENTRY, PackBuilder, PackedBlob
from capsule.adapters.repository.pruneplan import Repacked
from capsule.adapters.repository.rebuild import read_pack_header
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.usage import IdSet

log = structlog.get_logger(__name__)

Checkpoint = Callable[[str], None]


class Repacker:
    """Fills new packs with whole stored blobs (a bundle whole) copied from condemned packs."""

    def __init__(self, repo: Repository, checkpoint: Checkpoint) -> None:
        self.repo = repo
        self.checkpoint = checkpoint
        self.builder = PackBuilder()
        self.in_builder: set[bytes] = set()
        self.copied: set[bytes] = set()
        self.written: dict[str, npt.NDArray[np.void]] = {}
        self.bytes_written = 0

    def copy_from(self, pack_id: str, needed: IdSet) -> None:
        try:
            header = read_pack_header(self.repo, pack_id)
        except ObjectNotFound:
            return
        ids = b"".join(b.blob_id for b in header)
        wanted = needed.contains(ids).tolist()
        units: dict[int, list[tuple[PackedBlob, bool]]] = {}
        for blob, want in zip(header, wanted, strict=True):
            units.setdefault(blob.offset, []).append((blob, want and blob.blob_id not in self.copied))
        if not any(w for unit in units.values() for _, w in unit):
            return
        data = memoryview(self.repo.backend.read("data", pack_id))
        for offset, unit in units.items():
            if not any(w for _, w in unit):
                continue
            head = unit[0][0]
            sealed = data[offset : offset + head.length]
            for blob, want in unit:
                if want:  # authenticated before it is copied: a damaged blob is never carried over
                    self.repo.open_blob(blob.blob_id, BlobLocation(pack_id, *blob[1:]), sealed)
            self._add([b for b, _ in unit], sealed)

    def _add(self, unit: list[PackedBlob], sealed: memoryview) -> None:
        ids = {b.blob_id for b in unit}
        if ids & self.in_builder:
            self._write()  # a pack lists an id at most once
        # A bundle's members after its first carry no length of their own (see pack.py).
        header = b"".join(
            HEADER_ENTRY.pack(b.blob_type, b.compression, 0 if k else b.length, b.plain_length, b.blob_id)
            for k, b in enumerate(unit)
        )
        self.builder.add_run(header, sealed)
        self.in_builder |= ids
        self.copied |= ids
        if self.builder.size >= self.repo.pack_size:
            self._write()

    def _write(self) -> None:
        if not len(self.builder):
            return
        pack_id, data = self.builder.finish(self.repo.sealer)
        self.repo.backend.write("data", pack_id, data)
        self.written[pack_id] = header_records(self.builder.header)
        self.bytes_written += len(data)
        self.builder, self.in_builder = PackBuilder(), set()
        self.checkpoint("prune:repack-pack-written")

    def finish(self) -> Repacked:
        self._write()
        if not self.written:
            return Repacked()
        name = self.repo.save_sealed("index", encode_index(self.written, version=self.repo.version))
        self.checkpoint("prune:repack-indexed")
        blobs = sum(len(r) for r in self.written.values())
        log.info("repacked", packs=len(self.written), blobs=blobs, bytes=self.bytes_written)
        return Repacked(tuple(sorted(self.written)), name, blobs, self.bytes_written)
