"""The index: which pack holds each blob, where, and how long it is.

Index files are sealed, zstd-compressed binary tables (layout in docs/repository-format.md). In memory
the index is a few numpy arrays sorted by the first 8 bytes of the blob id: about 60 bytes a blob, so
a database of millions of pages still fits in a small, bounded footprint, and batch look-ups are
vectorised.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from adapters.errors import IntegrityError
from adapters.repository.crypto import ID_SIZE
from adapters.repository.pack import BUNDLED, PackedBlob

INDEX_MAGIC = b"CIX2"
INDEX_MAGIC_V1 = b"CIX1"  # records without `within`: written by repositories of version 1
_COUNT = struct.Struct("<I")
RECORD_V1 = np.dtype(
    [
        ("id", f"V{ID_SIZE}"),
        ("type", "u1"),
        ("comp", "u1"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("plain", "<u4"),
    ]
)
RECORD = np.dtype([*RECORD_V1.descr, ("within", "<u4")])


class BlobLocation(NamedTuple):
    """A blob's pack and its place inside it."""

    pack_id: str
    blob_type: int
    compression: int
    offset: int
    length: int
    plain_length: int
    within: int = 0
    """Where the blob's plaintext starts in its bundle's (0 for a blob sealed alone)."""


# A pack header entry (see pack.HEADER_ENTRY) as a numpy record.
HEADER_DTYPE = np.dtype(
    [("type", "u1"), ("comp", "u1"), ("length", "<u4"), ("plain", "<u4"), ("id", f"V{ID_SIZE}")]
)


def header_records(header: bytes | bytearray | memoryview) -> npt.NDArray[np.void]:
    """Index records of a pack from header entries it wrote itself (see pack.py for bundles).

    Offsets are the running sum of stored lengths; a bundle's members take its first entry's
    offset and length, and `within` is the running sum of the plaintexts before them in it.
    """
    h = np.frombuffer(header, dtype=HEADER_DTYPE)
    recs = np.empty(len(h), dtype=RECORD)
    for field in ("id", "type", "comp", "plain"):
        recs[field] = h[field]
    lengths = h["length"].astype(np.uint64)
    starts = np.cumsum(lengths) - lengths
    member = np.isin(h["comp"], BUNDLED) & (lengths == 0)
    rows = np.arange(len(h))
    head = np.maximum.accumulate(np.where(member, 0, rows)) if len(h) else rows
    recs["offset"] = starts[head]
    recs["length"] = lengths[head]
    plain = h["plain"].astype(np.uint64)
    before = np.cumsum(plain) - plain
    recs["within"] = before - before[head]
    return recs


def record_ids(recs: npt.NDArray[np.void]) -> list[bytes]:
    raw = recs["id"].tobytes()
    return [raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)]


def records(blobs: list[PackedBlob]) -> npt.NDArray[np.void]:
    return np.array(
        [
            (b.blob_id, b.blob_type, b.compression, b.offset, b.length, b.plain_length, b.within)
            for b in blobs
        ],
        dtype=RECORD,
    )


def _narrow(recs: npt.NDArray[np.void], dtype: np.dtype[np.void]) -> npt.NDArray[np.void]:
    """`recs` as records of `dtype`: the fields both have are copied, the others are zero."""
    out = np.zeros(len(recs), dtype=dtype)
    for field in set(dtype.names or ()) & set(recs.dtype.names or ()):
        out[field] = recs[field]
    return out


def encode_index(
    packs: dict[str, npt.NDArray[np.void]], supersedes: Iterable[str] = (), *, version: int = 2
) -> bytes:
    """An index file's plaintext; `version` 1 (no bundles, no `within`) for repositories of version 1."""
    record = RECORD if version >= 2 else RECORD_V1
    parts = [INDEX_MAGIC if version >= 2 else INDEX_MAGIC_V1, _COUNT.pack(len(packs))]
    for pack_id, recs in packs.items():
        if version < 2 and (np.isin(recs["comp"], BUNDLED).any() or recs["within"].any()):
            raise ValueError("a version 1 index cannot hold bundled blobs")
        parts.append(bytes.fromhex(pack_id))
        parts.append(_COUNT.pack(len(recs)))
        parts.append(recs.tobytes() if version >= 2 else _narrow(recs, record).tobytes())
    old = list(supersedes)
    parts.append(_COUNT.pack(len(old)))
    parts.extend(bytes.fromhex(i) for i in old)
    return b"".join(parts)


def decode_index(data: bytes, name: str) -> tuple[list[tuple[str, npt.NDArray[np.void]]], list[str]]:
    """Return ([(pack id, records)], superseded index ids); raise IntegrityError if malformed."""
    try:
        if data[:4] not in (INDEX_MAGIC, INDEX_MAGIC_V1):
            raise ValueError("bad magic")
        record = RECORD if data[:4] == INDEX_MAGIC else RECORD_V1
        (count,) = _COUNT.unpack_from(data, 4)
        pos = 8
        packs = []
        for _ in range(count):
            pack_id = data[pos : pos + ID_SIZE].hex()
            (n,) = _COUNT.unpack_from(data, pos + ID_SIZE)
            pos += ID_SIZE + 4
            recs = np.frombuffer(data, dtype=record, count=n, offset=pos)
            pos += n * record.itemsize
            if record is RECORD_V1:
                recs = _narrow(recs, RECORD)
            packs.append((pack_id, recs))
        (old_count,) = _COUNT.unpack_from(data, pos)
        pos += 4
        if pos + old_count * ID_SIZE != len(data):
            raise ValueError("wrong length")
        old = [data[pos + i * ID_SIZE : pos + (i + 1) * ID_SIZE].hex() for i in range(old_count)]
    except (ValueError, struct.error) as e:
        raise IntegrityError(f"index {name[:12]} is malformed ({e})") from e
    return packs, old


def _prefix_keys(ids: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(ids[:, :8]).view(">u8").ravel().astype(np.uint64)


def _id_matrix(recs: npt.NDArray[np.void]) -> npt.NDArray[np.uint8]:
    """The records' ids as an (n, 32) byte matrix: a view into `recs` (contiguous), not a copy."""
    assert recs.dtype.names is not None and recs.dtype.names[0] == "id"
    if not len(recs):
        return np.zeros((0, ID_SIZE), dtype=np.uint8)
    return np.ndarray(
        (len(recs), ID_SIZE),
        dtype=np.uint8,
        buffer=recs,
        offset=0,  # `id` is every record layout's first field
        strides=(recs.strides[0], 1),
    )


@dataclass(frozen=True)
class _Frozen:
    """Sorted arrays, replaced whole on each merge so reader threads never see a half-update."""

    keys: npt.NDArray[np.uint64]
    packs: npt.NDArray[np.uint32]
    recs: npt.NDArray[np.void]

    @property
    def ids(self) -> npt.NDArray[np.uint8]:
        # A view: a copy would add 32 bytes per blob to memory, and as much again while merging.
        return _id_matrix(self.recs)


_EMPTY = _Frozen(
    np.zeros(0, dtype=np.uint64),
    np.zeros(0, dtype=np.uint32),
    np.zeros(0, dtype=RECORD),
)

_FIELDS = ("type", "comp", "offset", "length", "plain", "within")

# Packs added during a run stay staged (found through a set of their ids) until this many blobs,
# then join the sorted arrays.
MERGE_AT = 65_536


class Index:
    """All known blobs: sorted arrays loaded from index files, plus packs added by this run.

    Look-ups may run from several threads while one thread adds packs.
    """

    def __init__(self) -> None:
        self.pack_ids: list[str] = []
        self._pack_pos: dict[str, int] = {}
        self._frozen = _EMPTY
        self._recent: set[bytes] = set()
        self._recent_map: dict[bytes, BlobLocation] | None = None
        self._staged: list[tuple[int, npt.NDArray[np.void]]] = []
        self._gone: set[int] = set()
        self.generation = 0  # grows with every merge: a reader can tell its view is old

    def __len__(self) -> int:
        return len(self._frozen.recs) + len(self._recent)

    def _pack_number(self, pack_id: str) -> int:
        pos = self._pack_pos.get(pack_id)
        if pos is None:
            pos = self._pack_pos[pack_id] = len(self.pack_ids)
            self.pack_ids.append(pack_id)
        return pos

    def stage(self, pack_id: str, recs: npt.NDArray[np.void], gone: bool = False) -> None:
        """Queue records read from an index file; call `freeze()` once all are staged.

        `gone` marks a pack missing from the repository: its blobs are found only if no other
        pack holds them.
        """
        number = self._pack_number(pack_id)
        if gone:
            self._gone.add(number)
        self._staged.append((number, recs))

    def in_recent(self, blob_id: bytes) -> bool:
        return blob_id in self._recent

    def none_recent(self, blob_ids: list[bytes]) -> bool:
        return self._recent.isdisjoint(blob_ids)

    def _recent_location(self, blob_id: bytes) -> BlobLocation | None:
        """Where a blob of a pack added by this run is; the map is built only when asked for."""
        if blob_id not in self._recent:
            return None
        if self._recent_map is None:
            self._recent_map = {}
            for number, recs in self._staged:
                self._map_recent(number, recs)
        return self._recent_map.get(blob_id)

    def _map_recent(self, number: int, recs: npt.NDArray[np.void]) -> None:
        assert self._recent_map is not None
        pack_id = self.pack_ids[number]
        for blob_id, row in zip(record_ids(recs), recs.tolist(), strict=True):
            self._recent_map.setdefault(blob_id, BlobLocation(pack_id, *row[1:]))

    def freeze(self) -> None:
        """Merge everything staged into the sorted arrays."""
        if not self._staged:
            return
        old = self._frozen
        recs = np.concatenate([old.recs, *(r for _, r in self._staged)])
        packs = np.concatenate([old.packs, *(np.full(len(r), p, dtype=np.uint32) for p, r in self._staged)])
        keys = _prefix_keys(_id_matrix(recs))
        # Among copies of one blob, those in packs known to be gone sort last: look-ups take the first.
        gone = np.isin(packs, np.fromiter(self._gone, dtype=np.uint32, count=len(self._gone)))
        order = np.lexsort((gone, keys))
        del gone
        # One array at a time, each unsorted one let go as soon as its sorted copy exists: the
        # peak of a merge is what grows with the repository.
        keys = keys[order]
        packs = packs[order]
        recs = recs[order]
        self._frozen = _Frozen(keys, packs, recs)
        self._staged = []
        self.generation += 1
        # Only after the arrays hold them: a reader checks the recent set first.
        self._recent = set()
        self._recent_map = None

    def add_pack(self, pack_id: str, recs: npt.NDArray[np.void]) -> None:
        """Record a pack this run wrote, from its index records; its blobs are found at once."""
        self.stage(pack_id, recs)
        if self._recent_map is not None:
            self._map_recent(self._pack_pos[pack_id], recs)
        self._recent.update(record_ids(recs))
        if len(self._recent) >= MERGE_AT:
            self.freeze()

    @staticmethod
    def _scan(f: _Frozen, blob_id: bytes) -> int:
        if not len(f.keys):
            return -1
        # A numpy scalar, not a Python int: an int above 2**63 would make numpy convert the whole
        # array for every search.
        key = np.uint64(int.from_bytes(blob_id[:8], "big"))
        lo = int(np.searchsorted(f.keys, key, "left"))
        hi = int(np.searchsorted(f.keys, key, "right"))
        for i in range(lo, hi):
            if f.ids[i].tobytes() == blob_id:
                return i
        return -1

    def _location(self, f: _Frozen, i: int) -> BlobLocation:
        r = f.recs[i]
        return BlobLocation(
            self.pack_ids[int(f.packs[i])],
            int(r["type"]),
            int(r["comp"]),
            int(r["offset"]),
            int(r["length"]),
            int(r["plain"]),
            int(r["within"]),
        )

    def contains(self, blob_id: bytes) -> bool:
        return blob_id in self._recent or self._scan(self._frozen, blob_id) >= 0

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        found = self._recent_location(blob_id)
        if found is not None:
            return found
        f = self._frozen
        i = self._scan(f, blob_id)
        return None if i < 0 else self._location(f, i)

    def _positions(self, f: _Frozen, blob_ids: list[bytes]) -> npt.NDArray[np.int64]:
        """Vectorised look-up: the row of each id in `f`, or -1."""
        if not blob_ids or not len(f.keys):
            return np.full(len(blob_ids), -1, dtype=np.int64)
        q = np.frombuffer(b"".join(blob_ids), dtype=np.uint8).reshape(-1, ID_SIZE)
        qkeys = _prefix_keys(q)
        pos = np.searchsorted(f.keys, qkeys, "left")
        pos_c = np.minimum(pos, len(f.keys) - 1)
        hit = (f.keys[pos_c] == qkeys) & (pos < len(f.keys))
        same = hit & np.all(f.ids[pos_c] == q, axis=1)
        out = np.where(same, pos_c, -1).astype(np.int64)
        # Rare: two ids share their first 8 bytes; settle those one by one.
        for j in np.nonzero(hit & ~same)[0]:
            out[j] = self._scan(f, blob_ids[int(j)])
        return out

    def columns(
        self, blob_ids: list[bytes]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.void]]:
        """(row or -1, pack number, record) of each id, as arrays: for restoring many blobs at once."""
        self.freeze()  # everything in the sorted arrays, so one vectorised look-up finds all
        f = self._frozen
        pos = self._positions(f, blob_ids)
        if not len(f.keys):
            return pos, np.zeros(len(pos), dtype=np.uint32), np.zeros(len(pos), dtype=RECORD)
        safe = np.maximum(pos, 0)
        return pos, f.packs[safe], f.recs[safe]

    def contains_many(self, blob_ids: list[bytes]) -> list[bool]:
        recent = self._recent
        pos = self._positions(self._frozen, blob_ids)
        return [bool(p >= 0) or b in recent for b, p in zip(blob_ids, pos, strict=True)]

    def locate_many(self, blob_ids: list[bytes]) -> list[BlobLocation | None]:
        recent = self._recent
        f = self._frozen
        pos = self._positions(f, blob_ids)
        # Pull the columns out once: building locations from numpy scalars one by one is slow.
        rows = f.recs[np.maximum(pos, 0)] if len(f.recs) else f.recs
        columns = zip(
            f.packs[np.maximum(pos, 0)].tolist() if len(f.packs) else [0] * len(pos),
            *((rows[c].tolist() if len(rows) else [0] * len(pos)) for c in _FIELDS),
            strict=True,
        )
        out: list[BlobLocation | None] = []
        for b, p, (pack, btype, comp, offset, length, plain, within) in zip(
            blob_ids, pos.tolist(), columns, strict=True
        ):
            loc = self._recent_location(b) if b in recent else None
            if loc is None and p >= 0:
                loc = BlobLocation(self.pack_ids[pack], btype, comp, offset, length, plain, within)
            out.append(loc)
        return out

    def by_pack(self) -> Iterator[tuple[str, list[tuple[bytes, BlobLocation]]]]:
        """Every indexed blob grouped by pack, one pack's list in memory at a time."""
        self.freeze()
        f = self._frozen
        order = np.argsort(f.packs, kind="stable")
        bounds = np.flatnonzero(np.diff(f.packs[order])) + 1
        for group in np.split(order, bounds) if len(order) else []:
            pack_id = self.pack_ids[int(f.packs[group[0]])]
            yield pack_id, [(f.ids[i].tobytes(), self._location(f, int(i))) for i in group]
