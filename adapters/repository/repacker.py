"""Copying blobs out of condemned packs into new ones, for prune's repack phase.

A blob is copied as it is stored (a bundle whole, its members' header entries as pack.py lays
them out): nothing is decrypted to be sealed again. Each pack is read once, whole; its header is
opened from those bytes and checked as section 8.2 of the repository format says, and every stored
unit copied is opened with its AES-GCM tag first, so that a unit damaged since it was written is
never carried over (section 14.2 says why the tag is the whole check a copier owes: the bytes and
their header entries move unchanged). Stored units that lie end to end are copied as one run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import structlog

from capsule.adapters.errors import IntegrityError, ObjectNotFound
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.index import HEADER_DTYPE, encode_index, header_records
from capsule.adapters.repository.pack import (
    BUNDLED,
    HEADER_AAD,
    HEADER_ENTRY,
    PACK_MAGIC,
    TRAILER,
    PackBuilder,
    blob_aad,
    bundle_aad,
)
from capsule.adapters.repository.pruneplan import Repacked
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.usage import ID_DTYPE, find_sorted

log = structlog.get_logger(__name__)

Checkpoint = Callable[[str], None]


def open_pack(repo: Repository, data: bytes, name: str) -> tuple[bytes, npt.NDArray[np.void]]:
    """(header plaintext, its entries as HEADER_DTYPE) of a whole pack's bytes, checked as
    `pack.parse_header` checks them; IntegrityError naming the pack otherwise."""
    what = f"the header of pack {name[:12]}"
    if len(data) < TRAILER.size:
        raise IntegrityError(f"pack {name[:12]} is truncated")
    header_len, magic = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if magic != PACK_MAGIC:
        raise IntegrityError(f"pack {name[:12]} does not end with a pack trailer")
    if header_len + TRAILER.size > len(data):
        raise IntegrityError(f"{what} claims an impossible length")
    end = len(data) - TRAILER.size
    header = repo.sealer.open(memoryview(data)[end - header_len : end], HEADER_AAD, what)
    if len(header) % HEADER_ENTRY.size:
        raise IntegrityError(f"{what} has a broken length")
    entries = np.frombuffer(header, dtype=HEADER_DTYPE)
    bundled = (entries["comp"] == BUNDLED[0]) | (entries["comp"] == BUNDLED[1])
    member = bundled & (entries["length"] == 0)
    if ((entries["length"] == 0) & ~bundled).any():
        raise IntegrityError(f"{what} lists a blob with no bytes")
    if member.any():
        rows = np.arange(len(entries))
        head = np.maximum.accumulate(np.where(member, 0, rows))
        lone = member & ((head == rows) | ~bundled[head])
        lone |= member & (
            (entries["type"][head] != entries["type"]) | (entries["comp"][head] != entries["comp"])
        )
        if member[0] or lone.any():
            raise IntegrityError(f"{what} lists a bundle member outside a bundle")
    if int(entries["length"].sum(dtype=np.int64)) + header_len + TRAILER.size != len(data):
        raise IntegrityError(f"{what} does not account for the pack's size")
    return header, entries


class Source(NamedTuple):
    """A condemned pack read and checked, with what of it is to be copied."""

    header: bytes
    data: bytes
    recs: npt.NDArray[np.void]
    take: npt.NDArray[np.bool_]
    """The rows copied: whole units."""
    heads: npt.NDArray[np.bool_]
    """The first row of each unit copied."""
    ids: npt.NDArray[np.bytes_]
    """The ids of the rows copied."""
    found: int
    """How many of the wanted blobs the pack held."""
    blobs_end: int
    """Where the pack's blobs end (its header begins)."""


class Repacker:
    """Fills new packs with whole stored units (a blob, or a bundle whole) copied from condemned
    packs."""

    def __init__(self, repo: Repository, checkpoint: Checkpoint) -> None:
        self.repo = repo
        self.checkpoint = checkpoint
        self.builder = PackBuilder()
        self.in_builder: set[bytes] = set()
        self.written: dict[str, npt.NDArray[np.void]] = {}
        self.bytes_written = 0

    def open_source(self, pack_id: str, wanted: npt.NDArray[np.bytes_]) -> Source | None:
        """Read pack `pack_id` and authenticate every unit holding one of `wanted` (sorted ids,
        ID_DTYPE); None if the pack is gone. Reads only: safe on several threads at once."""
        try:
            data = self.repo.backend.read("data", pack_id)
        except ObjectNotFound:
            return None
        header, entries = open_pack(self.repo, data, pack_id)
        recs = header_records(header)
        ids = np.ascontiguousarray(recs["id"]).view(ID_DTYPE)
        want, _ = find_sorted(wanted, ids)
        if not want.any():
            return None
        rows = np.arange(len(recs))
        # The first row of each row's unit; a unit is copied whole when one of its blobs is wanted.
        head = np.maximum.accumulate(np.where(entries["length"] > 0, rows, 0))
        self._authenticate(pack_id, memoryview(data), recs, head, want)
        unit_wanted = np.zeros(len(recs), dtype=bool)
        unit_wanted[head[want]] = True
        take = unit_wanted[head]
        heads = take & (entries["length"] > 0)
        blobs_end = int(entries["length"].sum(dtype=np.int64))
        return Source(header, data, recs, take, heads, ids[take], int(want.sum()), blobs_end)

    def add(self, source: Source | None) -> int:
        """Copy the units `open_source` checked; return how many wanted blobs they hold."""
        if source is None:
            return 0
        self._add(source)
        return source.found

    def copy_from(self, pack_id: str, wanted: npt.NDArray[np.bytes_]) -> int:
        """Copy the units of pack `pack_id` holding one of `wanted` (sorted ids, ID_DTYPE), each
        authenticated first; return how many of `wanted` the pack held (0 if the pack is gone)."""
        return self.add(self.open_source(pack_id, wanted))

    def _authenticate(
        self,
        pack_id: str,
        data: memoryview,
        recs: npt.NDArray[np.void],
        head: npt.NDArray[np.intp],
        want: npt.NDArray[np.bool_],
    ) -> None:
        """Open every stored unit holding a wanted blob with its AES-GCM tag, each unit once;
        IntegrityError naming the first wanted blob of a unit that fails.

        The unit is copied byte for byte, under header entries copied from the pack's authenticated
        header: the tag proves those bytes are the ones their writer sealed, which is all a copy
        needs (the format's section 14.2). Decompressing and hashing each member again would prove
        only what the writer already did, and every reader of the new pack checks it anyway."""
        sealer = self.repo.sealer
        units, first = np.unique(head[want], return_index=True)
        named = np.flatnonzero(want)[first]
        raw_ids = np.ascontiguousarray(recs["id"][named]).tobytes()
        columns = (recs[name][units].tolist() for name in ("type", "comp", "offset", "length"))
        for k, (btype, comp, offset, length) in enumerate(zip(*columns, strict=True)):
            blob_id = raw_ids[k * ID_SIZE : (k + 1) * ID_SIZE]

            def what(blob_id: bytes = blob_id) -> str:
                return f"blob {blob_id.hex()[:12]} in pack {pack_id[:12]}"

            aad = bundle_aad(btype, comp) if comp in BUNDLED else blob_aad(btype, comp, blob_id)
            sealer.open(data[offset : offset + length], aad, what)

    def _add(self, source: Source) -> None:
        """Add the units of `source` to the pack being filled, runs of adjacent units each as one
        piece."""
        header, data, recs, take = (
            memoryview(source.header),
            memoryview(source.data),
            source.recs,
            source.take,
        )
        raw = source.ids.tobytes()
        taken = {raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)}
        heads = source.heads
        incoming = int(recs["length"][heads].sum(dtype=np.int64))
        if len(self.builder) and (
            not self.in_builder.isdisjoint(taken) or self.builder.size + incoming > self.repo.pack_size
        ):
            self._write()  # a pack lists an id at most once; and packs keep about their size
        # Runs of rows taken one after the other: adjacent rows are adjacent units in the file, and
        # a run's bytes end where the next row's unit begins (or where the blobs end).
        edges = np.flatnonzero(np.diff(np.concatenate([[0], take.astype(np.int8), [0]])))
        starts, ends = edges[::2], edges[1::2]
        begins = np.append(recs["offset"].astype(np.int64), source.blobs_end)
        size = HEADER_ENTRY.size
        spans = zip(
            starts.tolist(), ends.tolist(), begins[starts].tolist(), begins[ends].tolist(), strict=True
        )
        pieces = [(header[a * size : b * size], data[first:stop]) for a, b, first, stop in spans]
        # Joined: one piece a source pack, and a copy (a slice would keep the whole source pack in
        # memory until the new pack is written).
        self.builder.add_run(b"".join(h for h, _ in pieces), memoryview(b"".join(d for _, d in pieces)))
        self.in_builder |= taken
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
