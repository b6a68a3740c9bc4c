"""The index: which pack holds each blob, where, and how long it is.

Index files are sealed, zstd-compressed binary tables (layout in docs/repository-format.md). The
index a process builds from them is a few sorted runs of 54-byte records (record and pack number),
merged like a binary counter as packs are added. Runs are held in memory up to MEMORY_RECORDS
records in all; beyond that they live in unnamed temporary files, found through one key in every
FILE_SPARSE records and a Bloom filter kept in memory, and read a block at a time. Merges sort one key
range at a time. So the memory the index takes stays bounded whatever the size of the repository,
and look-ups stay vectorised.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from capsule.adapters.errors import DiskFull, IntegrityError, RepositoryError
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.pack import BUNDLED, PackedBlob

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
    member = ((h["comp"] == BUNDLED[0]) | (h["comp"] == BUNDLED[1])) & (lengths == 0)
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
    """The records' ids as an (n, 32) byte matrix: a view into `recs`, not a copy."""
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


_FIELDS = ("type", "comp", "offset", "length", "plain", "within")

# A record of a sorted run: the index record and the number of its pack.
RUN_RECORD = np.dtype([*RECORD.descr, ("pack", "<u4")])
# The same records as opaque bytes: numpy moves these by fancy indexing much faster than records
# with fields (see docs/performance.md, "Index records moved as opaque bytes").
_RUN_BYTES = np.dtype(f"V{RUN_RECORD.itemsize}")


def _take(recs: npt.NDArray[np.void], rows: npt.NDArray[Any]) -> npt.NDArray[np.void]:
    """recs[rows] (an index or a mask), moved as opaque bytes."""
    taken: npt.NDArray[np.void] = recs.view(_RUN_BYTES)[rows].view(RUN_RECORD)
    return taken


def _put(out: npt.NDArray[np.void], rows: npt.NDArray[Any], recs: npt.NDArray[np.void]) -> None:
    """out[rows] = recs, moved as opaque bytes."""
    out.view(_RUN_BYTES)[rows] = recs.view(_RUN_BYTES)


# Packs added during a run, or read from index files, stay staged in memory (found through a set of
# their ids) until this many blobs, then become a sorted run.
MERGE_AT = 65_536
# Records read from index files become a run once this many are staged: larger runs, fewer merges.
LOAD_AT = 262_144
# Runs stay in memory while they hold this many records in all (about 54 MB); beyond that the
# largest go to files, read a block at a time. So memory does not grow with the repository.
MEMORY_RECORDS = 1_048_576
# One key in memory for every this many records of a run (a power of two): it leads a look-up to
# one block of the run, searched there. A run in a file has more, so that a look-up reads less:
# a block of 16 records (864 bytes) reads much faster than one of 64, for half a byte a blob
# (see docs/performance.md, "Blocks of 16 records in a run in a file").
SPARSE = 64
FILE_SPARSE = 16
# Per run, at most this many keys (8 MB) and this many Bloom filter bits (8 MB): a larger run takes
# larger blocks and lets more absent ids through, so memory stays bounded at any size.
MAX_SPARSE_KEYS = 1 << 20
MAX_BLOOM_BITS = 1 << 26
# A merge of runs sorts this many records at a time, split by key range: its memory does not grow
# with the index either.
SLICE = 131_072
# Look-ups answer this many ids at a time.
QUERY_CHUNK = 4096
# by_pack() groups this many records at a time.
BY_PACK_BATCH = 262_144

spill_dir: str | None = None
"""Where run files are made (unnamed, gone when closed); None for the system's temporary directory."""


def _key_view(recs: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """The first 8 bytes of every record's id, read in place as big-endian integers."""
    if not len(recs):
        return np.zeros(0, dtype=np.uint64)
    return np.ndarray((len(recs),), dtype=">u8", buffer=recs, offset=0, strides=(recs.strides[0],))


class _Bloom:
    """A Bloom filter over ids: says for sure when a run does not hold an id, without reading it.

    12 bits a blob, up to MAX_BLOOM_BITS, and four probes taken from id bytes 8-24 (keyed hashes:
    uniform, and apart from the first 8 bytes that order the run): about 1% of absent ids get past
    it, more in a run of over 5.6 million blobs.
    """

    BITS_PER_BLOB = 12

    def __init__(self, n: int) -> None:
        self.size = np.uint64(min(max(64, self.BITS_PER_BLOB * n), MAX_BLOOM_BITS))
        self.bits = np.zeros(-(-int(self.size) // 8), dtype=np.uint8)

    @classmethod
    def restored(cls, size: int, bits: npt.NDArray[np.uint8]) -> _Bloom:
        """A filter saved earlier: its size in bits and the bits."""
        if len(bits) != -(-size // 8):
            raise ValueError(f"a Bloom filter of {size} bits cannot have {len(bits)} bytes")
        bloom = cls.__new__(cls)
        bloom.size, bloom.bits = np.uint64(size), bits
        return bloom

    def _probes(self, ids: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
        words = np.ascontiguousarray(ids[:, 8:24]).view("<u4").astype(np.uint64)
        return (words * self.size) >> np.uint64(32)

    def add(self, ids: npt.NDArray[np.uint8]) -> None:
        for at in range(0, len(ids), 65_536):  # a slice at a time: its probes take 2 MB
            probes = self._probes(ids[at : at + 65_536]).ravel()
            np.bitwise_or.at(
                self.bits, probes >> np.uint64(3), np.left_shift(1, probes & np.uint64(7)).astype(np.uint8)
            )

    def may_hold(self, ids: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        probes = self._probes(ids)
        found: npt.NDArray[np.bool_] = (
            (self.bits[probes >> np.uint64(3)] >> (probes & np.uint64(7))) & 1
        ).all(axis=1)
        return found


def _spill_error(e: OSError) -> Exception:
    where = spill_dir or tempfile.gettempdir()
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"no room left in {where} for the index's temporary files (54 bytes a blob beyond "
            "the first million); free some space there or point TMPDIR at a folder with room, "
            "then run the command again"
        )
    return RepositoryError(f"cannot write the index's temporary files in {where}: {e.strerror or e}")


class _RunFile:
    """An unnamed file (gone from the disk once closed), closed when no run or reader holds it."""

    fd = -1
    size = 0

    def __init__(self) -> None:
        try:
            with tempfile.TemporaryFile(dir=spill_dir) as f:
                self.fd = os.dup(f.fileno())
        except OSError as e:
            raise _spill_error(e) from e

    def write(self, data: memoryview) -> None:
        try:
            while data:
                written = os.write(self.fd, data)
                self.size += written
                data = data[written:]
        except OSError as e:
            raise _spill_error(e) from e

    def read_all(self) -> npt.NDArray[np.void]:
        return np.frombuffer(os.pread(self.fd, self.size, 0), dtype=RUN_RECORD)

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


class _Run:
    """Records sorted by (key, gone): in memory, or in an unnamed file read with pread. In memory
    either way: the first key of every block of `every` records; for a run in a file, a Bloom
    filter too (a run in memory is searched whole, see `_find_in_memory`)."""

    def __init__(
        self,
        n: int,
        every: int,
        sparse: npt.NDArray[np.uint64],
        bloom: _Bloom | None,
        *,
        recs: npt.NDArray[np.void] | None,
        file: _RunFile | None,
    ) -> None:
        self.n = n
        self.every = every
        self.sparse = sparse
        self.bloom = bloom
        self.recs = recs
        self.file = file
        self._keys: npt.NDArray[np.uint64] | None = None  # every key, for a run in memory

    def keys(self) -> npt.NDArray[np.uint64]:
        """The key of every record, as one array (8 bytes a record); made on first use."""
        assert self.recs is not None
        if self._keys is None:
            self._keys = _key_view(self.recs).astype(np.uint64)
        return self._keys

    @classmethod
    def build(cls, chunks: Iterable[npt.NDArray[np.void]], n: int, *, in_file: bool) -> _Run:
        """A run of `n` records: the chunks (already in order), end to end."""
        every = FILE_SPARSE if in_file else SPARSE
        while n > every * MAX_SPARSE_KEYS:
            every *= 2
        sparse: list[npt.NDArray[np.uint64]] = [np.zeros(0, dtype=np.uint64)]
        # The filter saves a run in a file the reading of blocks; a run in memory has no use for it,
        # and building it slowed every load (see docs/performance.md, "No Bloom filter for a run in
        # memory").
        bloom = _Bloom(n) if in_file else None
        # A single chunk held in memory is the run itself; several are copied into one array.
        whole = chunks[0] if isinstance(chunks, list) and len(chunks) == 1 and not in_file else None
        recs: npt.NDArray[np.void] | None = None
        if whole is not None:
            recs = np.ascontiguousarray(whole)
        elif not in_file:
            recs = np.empty(n, dtype=RUN_RECORD)
        file = _RunFile() if in_file else None
        written = 0
        for given in chunks:
            chunk = np.ascontiguousarray(given)
            if written + len(chunk) > n:
                raise ValueError(f"a run of {n} records was given more")
            ids = _id_matrix(chunk)
            # Rows of this chunk whose place in the run is a multiple of `every`.
            sparse.append(_prefix_keys(ids[(-written) % every :: every]))
            if bloom is not None:
                bloom.add(ids)
            if file is not None:
                file.write(chunk.view(np.uint8).data)
            elif whole is None:
                assert recs is not None
                recs[written : written + len(chunk)] = chunk
            written += len(chunk)
        if written != n:
            raise ValueError(f"a run of {n} records was given {written}")
        return cls(n, every, np.concatenate(sparse), bloom, recs=recs, file=file)

    def into_memory(self) -> _Run:
        """This run with its records read into memory."""
        recs = self.rows(0, self.n)
        return _Run(self.n, self.every, self.sparse, None, recs=recs, file=None)

    def into_file(self) -> _Run:
        """This run with its records in a file."""
        return _Run.build((self.rows(at, at + SLICE) for at in range(0, self.n, SLICE)), self.n, in_file=True)

    def rows(self, start: int, stop: int) -> npt.NDArray[np.void]:
        """Records [start, stop)."""
        stop = min(stop, self.n)
        if self.recs is not None:
            return self.recs[start:stop]
        assert self.file is not None
        size = RUN_RECORD.itemsize
        data = os.pread(self.file.fd, max(stop - start, 0) * size, start * size)
        return np.frombuffer(data, dtype=RUN_RECORD)

    def _blocks(self, blocks: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
        """The records of each block (ascending), end to end; zeros past the end of the run."""
        assert self.file is not None
        size = RUN_RECORD.itemsize * self.every
        # Only the run's last block can be short, and it comes last.
        data = b"".join([os.pread(self.file.fd, size, b * size) for b in blocks.tolist()])
        out = np.zeros(len(blocks) * self.every, dtype=RUN_RECORD)
        out.view(np.uint8)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        return out

    def lower_bound(
        self, qkeys: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.void], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """For each key: the first row whose key is not below it (n if none); the records searched;
        where that row is among them; and whether it is (for a run in a file, the first row of the
        next block is not)."""
        if not self.n:
            zeros = np.zeros(len(qkeys), dtype=np.int64)
            return zeros, np.zeros(0, dtype=RUN_RECORD), zeros, zeros.astype(bool)
        # The last block whose first key is below the query: every row before it is below too, and
        # the next block starts at or above it. A binary search inside that block, all queries in
        # step, finds the row.
        every = self.every
        block = np.maximum(np.searchsorted(self.sparse, qkeys, "left") - 1, 0).astype(np.int64)
        if self.recs is not None:
            space, start = self.recs, block * every
        else:
            wanted, which = np.unique(block, return_inverse=True)
            space, start = self._blocks(wanted), which.astype(np.int64) * every
        keys = _key_view(space)
        limit = start + np.minimum(every, self.n - block * every)
        last = len(space) - 1
        pos = start.copy()
        step = every // 2
        while step:
            probe = pos + (step - 1)
            pos += step * ((probe < limit) & (keys[np.minimum(probe, last)] < qkeys))
            step //= 2
        pos += (pos < limit) & (keys[np.minimum(pos, last)] < qkeys)
        # In memory the search space is the whole run: a row past its block is still in it.
        inside = pos < (limit if self.recs is None else self.n)
        return block * every + (pos - start), space, pos, inside

    def find(
        self, q: npt.NDArray[np.uint8], qkeys: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.void]]:
        """(row of each id or -1, its record): the copy in a pack not known gone first."""
        if self.recs is not None:
            return self._find_in_memory(q, qkeys)
        rows = np.full(len(qkeys), -1, dtype=np.int64)
        found = np.zeros(len(qkeys), dtype=RUN_RECORD)
        assert self.bloom is not None  # every run in a file has one
        maybe = np.flatnonzero(self.bloom.may_hold(q)) if self.n else np.zeros(0, dtype=np.int64)
        if not len(maybe):
            return rows, found
        row, space, pos, inside = self.lower_bound(qkeys[maybe])
        # Where the row is the first of the next block, or its key is shared with other ids, the
        # query is settled one by one.
        safe = np.minimum(pos, len(space) - 1)
        hit = inside & (_key_view(space)[safe] == qkeys[maybe]) & (row < self.n)
        same = hit & np.all(_id_matrix(space)[safe] == q[maybe], axis=1)
        rows[maybe[same]] = row[same]
        _put(found, maybe[same], _take(space, safe[same]))
        # Past its block, the row can hold the query only if it starts the next block with its key.
        first_of_next = np.zeros(len(row), dtype=bool)
        past = np.flatnonzero(~inside & (row < self.n))
        first_of_next[past] = self.sparse[row[past] // self.every] == qkeys[maybe][past]
        for j in np.flatnonzero(~same & (first_of_next | hit)):
            i = int(maybe[j])
            rows[i], record = self.scan(q[i].tobytes(), int(row[j]))
            if record is not None:
                found[i] = record
        return rows, found

    def _find_in_memory(
        self, q: npt.NDArray[np.uint8], qkeys: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.void]]:
        """`find` for a run in memory: one binary search of all its keys. Cheaper than the Bloom
        filter and the search of one block, which pay off only when a block must be read, for the
        256 ids a backup asks at a time (see docs/performance.md, "One binary search for a run in
        memory")."""
        assert self.recs is not None
        rows = np.full(len(qkeys), -1, dtype=np.int64)
        found = np.zeros(len(qkeys), dtype=RUN_RECORD)
        if not self.n or not len(qkeys):
            return rows, found
        keys = self.keys()
        pos = np.searchsorted(keys, qkeys, "left")
        safe = np.minimum(pos, self.n - 1)
        hit = (pos < self.n) & (keys[safe] == qkeys)
        same = hit & np.all(_id_matrix(self.recs)[safe] == q, axis=1)
        rows[same] = pos[same]
        _put(found, np.flatnonzero(same), _take(self.recs, safe[same]))
        # The key is shared with another id (8 bytes of a keyed hash: hardly ever): one by one.
        for i in np.flatnonzero(hit & ~same):
            rows[i], record = self.scan(q[i].tobytes(), int(pos[i]))
            if record is not None:
                found[i] = record
        return rows, found

    def scan(self, blob_id: bytes, start: int) -> tuple[int, np.void | None]:
        """The first row from `start` holding exactly `blob_id` among those of its key."""
        key = int.from_bytes(blob_id[:8], "big")
        while start < self.n:
            block = self.rows(start, start + self.every)
            for k, record in enumerate(block):
                if int.from_bytes(bytes(record["id"])[:8], "big") != key:
                    return -1, None
                if bytes(record["id"]) == blob_id:
                    return start + k, record
            start += len(block)
        return -1, None


def _sorted_run_records(recs: npt.NDArray[np.void], gone: npt.NDArray[np.uint32]) -> npt.NDArray[np.void]:
    """`recs` (RUN_RECORD) in run order: by key, and among equal keys copies in gone packs last."""
    keys = _prefix_keys(_id_matrix(recs))
    if len(gone):
        order = np.lexsort((np.isin(recs["pack"], gone), keys))
    else:
        # Keys are the ids' first 8 bytes, nearly always unique: then any sort gives the one order,
        # and numpy's default sort takes well under half the time of its stable one. Equal keys
        # (a blob in two packs) keep the order they came in, as before.
        order = np.argsort(keys)
        ranked = keys[order]
        if len(ranked) > 1 and bool((ranked[1:] == ranked[:-1]).any()):
            order = np.argsort(keys, kind="stable")
        del ranked
    del keys
    return _take(recs, order)


def _merge(runs: list[_Run], gone: npt.NDArray[np.uint32], *, in_file: bool) -> _Run:
    """One run holding every record of `runs`, sorted a key range at a time."""
    total = sum(r.n for r in runs)
    biggest = max(runs, key=lambda r: r.n)
    slices = max(1, -(-total // SLICE))
    # Cut points spread over the key space as the biggest run fills it (ids are uniform hashes).
    at = (np.arange(1, slices) * biggest.n) // slices
    cuts = np.unique(np.array([_key_view(biggest.rows(int(i), int(i) + 1))[0] for i in at], dtype=np.uint64))
    bounds = [np.r_[0, r.lower_bound(cuts)[0], r.n].astype(np.int64) for r in runs]

    def pieces() -> Iterator[npt.NDArray[np.void]]:
        for s in range(len(cuts) + 1):
            part = np.concatenate(
                [np.array(r.rows(int(b[s]), int(b[s + 1]))) for r, b in zip(runs, bounds, strict=True)]
            )
            yield _sorted_run_records(part, gone)

    return _Run.build(pieces(), total, in_file=in_file)


class Index:
    """All known blobs: sorted runs, plus packs staged in memory.

    Look-ups may run from several threads while one thread adds packs. Whatever the number of
    blobs, the process holds at most MERGE_AT staged records, MEMORY_RECORDS in runs, and for runs
    in files one key in FILE_SPARSE and a Bloom filter.
    """

    def __init__(self) -> None:
        self.pack_ids: list[str] = []
        self._pack_pos: dict[str, int] = {}
        self._runs: tuple[_Run, ...] = ()
        self._recent: set[bytes] = set()
        self._recent_map: dict[bytes, BlobLocation] | None = None
        self._staged: list[tuple[int, npt.NDArray[np.void]]] = []
        self._staged_count = 0
        self._gone: set[int] = set()
        self.generation = 0  # grows with every merge: a reader can tell its view is old

    def __len__(self) -> int:
        return sum(r.n for r in self._runs) + len(self._recent)

    def _pack_number(self, pack_id: str) -> int:
        pos = self._pack_pos.get(pack_id)
        if pos is None:
            pos = self._pack_pos[pack_id] = len(self.pack_ids)
            self.pack_ids.append(pack_id)
        return pos

    def _gone_numbers(self) -> npt.NDArray[np.uint32]:
        return np.fromiter(self._gone, dtype=np.uint32, count=len(self._gone))

    def stage(self, pack_id: str, recs: npt.NDArray[np.void], gone: bool = False) -> None:
        """Queue records read from an index file; call `freeze()` once all are staged.

        `gone` marks a pack missing from the repository: its blobs are found only if no other
        pack holds them.
        """
        number = self._pack_number(pack_id)
        if gone:
            self._gone.add(number)
        self._staged.append((number, recs))
        self._staged_count += len(recs)
        if self._staged_count >= LOAD_AT and not self._recent:
            self.freeze()  # loading index files: memory stays bounded however many there are

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
        """Write everything staged as a sorted run, merging runs of like size."""
        if not self._staged:
            return
        staged = np.empty(self._staged_count, dtype=RUN_RECORD)
        at = 0
        for number, recs in self._staged:
            part = staged[at : at + len(recs)]
            for field in RECORD.names or ():
                part[field] = recs[field]
            part["pack"] = number
            at += len(recs)
        gone = self._gone_numbers()
        runs = [*self._runs, _Run.build([_sorted_run_records(staged, gone)], len(staged), in_file=False)]
        del staged
        # Like a binary counter: each record is rewritten about log2(total / MERGE_AT) times, and
        # there are about as many runs to search.
        while len(runs) >= 2 and runs[-2].n <= 2 * runs[-1].n:
            last = len(runs) - 2
            while last > 0 and runs[last - 1].n <= 2 * sum(r.n for r in runs[last:]):
                last -= 1
            # Into memory while the new run fits beside every run held there now; otherwise into
            # a file, so that memory holds the runs merged and a slice, not a second copy of them.
            merged = sum(r.n for r in runs[last:])
            held_now = sum(r.n for r in runs if r.recs is not None)
            runs[last:] = [_merge(runs[last:], gone, in_file=held_now + merged > MEMORY_RECORDS)]
        self._runs = tuple(r for r in runs if r.n)  # the merged runs are let go
        runs = list(self._runs)
        # The largest runs that fit in MEMORY_RECORDS are held in memory, the others in files.
        budget, held = MEMORY_RECORDS, set()
        for i in sorted(range(len(runs)), key=lambda i: -runs[i].n):
            if runs[i].n <= budget:
                budget -= runs[i].n
                held.add(i)
        # Those leaving memory first, so that memory never holds more than the budget.
        for i, run in enumerate(runs):
            if i not in held and run.recs is not None:
                runs[i] = run.into_file()
                self._runs = tuple(runs)
        for i in held:
            if runs[i].recs is None:
                runs[i] = runs[i].into_memory()
        self._runs = tuple(r for r in runs if r.n)
        self._staged = []
        self._staged_count = 0
        self.generation += 1
        # Only after the runs hold them: a reader checks the recent set first.
        self._recent = set()
        self._recent_map = None

    def state(self) -> tuple[list[str], list[int], tuple[_Run, ...]]:
        """(pack ids, numbers of packs known gone, sorted runs), everything staged frozen first:
        what `from_state` takes to rebuild this index without sorting anything again."""
        self.freeze()
        return list(self.pack_ids), sorted(self._gone), self._runs

    @classmethod
    def from_state(cls, pack_ids: list[str], gone: Iterable[int], runs: Iterable[_Run]) -> Index:
        index = cls()
        for pack_id in pack_ids:
            index._pack_number(pack_id)
        if len(index.pack_ids) != len(pack_ids):
            raise ValueError("a pack is listed twice")
        index._gone = set(gone)
        index._runs = tuple(r for r in runs if r.n)
        return index

    def add_pack(self, pack_id: str, recs: npt.NDArray[np.void]) -> None:
        """Record a pack this run wrote, from its index records; its blobs are found at once."""
        number = self._pack_number(pack_id)
        self._staged.append((number, recs))
        self._staged_count += len(recs)
        if self._recent_map is not None:
            self._map_recent(number, recs)
        self._recent.update(record_ids(recs))
        if self._staged_count >= MERGE_AT:
            self.freeze()

    def _find(
        self, blob_ids: list[bytes] | bytes, want_records: bool = False
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.void], npt.NDArray[np.bool_]]:
        """(run of each id or -1, with `want_records` its RUN_RECORD (zeros where not found), and
        whether the copy found is in a pack not known gone), for a list of ids or for ids end to
        end in one bytes object.

        A copy in a pack not known gone is preferred.
        """
        runs = self._runs
        joined = blob_ids if isinstance(blob_ids, bytes) else b"".join(blob_ids)
        if len(joined) % ID_SIZE:
            raise ValueError(f"ids end to end must be a multiple of {ID_SIZE} bytes")
        ids = np.frombuffer(joined, dtype=np.uint8).reshape(-1, ID_SIZE)
        n = len(ids)
        which = np.full(n, -1, dtype=np.int64)
        out = np.zeros(n if want_records else 0, dtype=RUN_RECORD)
        present = np.zeros(n, dtype=bool)
        if not n or not runs:
            return which, out, present
        gone = self._gone_numbers()
        # Largest run first: it holds most of what is found, and later runs see only the rest.
        largest_first = sorted(range(len(runs)), key=lambda i: -runs[i].n)
        for at in range(0, n, QUERY_CHUNK):
            q = ids[at : at + QUERY_CHUNK]
            qkeys = _prefix_keys(q)
            w = which[at : at + len(q)]  # views: filled in place
            there = present[at : at + len(q)]
            part = out[at : at + len(q)] if want_records else out
            todo = np.arange(len(q))  # not yet found in a pack not known gone
            for number in largest_first:
                rows, recs = runs[number].find(q[todo], qkeys[todo])
                hit = rows >= 0
                if not hit.any():
                    continue
                w[todo[hit]] = number
                if want_records:
                    _put(part, todo[hit], _take(recs, hit))
                if len(gone):
                    hit[hit] = ~np.isin(recs["pack"][hit], gone)
                there[todo[hit]] = True
                todo = todo[~hit]
                if not len(todo):
                    break
        return which, out, present

    @property
    def gone_packs(self) -> int:
        """How many packs the index names were missing from the repository when it was loaded."""
        return len(self._gone)

    def contains(self, blob_id: bytes) -> bool:
        """Whether the blob is stored in a pack that is there: a copy only in a pack known gone
        does not count, so that a backup stores it again instead of naming what cannot be read."""
        return blob_id in self._recent or bool(self._find([blob_id])[2][0])

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        """Where the blob is: a copy in a pack not known gone if there is one, else the one in a
        pack that is gone (whose read then says the pack is missing)."""
        found = self._recent_location(blob_id)
        if found is not None:
            return found
        which, recs, _ = self._find([blob_id], want_records=True)
        if which[0] < 0:
            return None
        r = recs[0]
        return BlobLocation(
            self.pack_ids[int(r["pack"])],
            *(int(r[field]) for field in _FIELDS),
        )

    def columns(
        self, blob_ids: list[bytes] | bytes
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.void]]:
        """(-1 where missing, pack number, record) of each id (in a list, or end to end in one
        bytes object), as arrays: for restoring many blobs at once."""
        self.freeze()  # everything in the runs, so one vectorised look-up finds all
        which, recs, _ = self._find(blob_ids, want_records=True)
        return which, np.ascontiguousarray(recs["pack"]), recs

    def contains_many(self, blob_ids: list[bytes]) -> list[bool]:
        """`contains` for each id: stored in a pack not known gone."""
        recent = self._recent
        _, _, present = self._find(blob_ids)
        return [bool(p) or b in recent for b, p in zip(blob_ids, present.tolist(), strict=True)]

    def contains_joined(self, ids: bytes) -> npt.NDArray[np.bool_]:
        """`contains` for each of `ids` end to end, as an array: a whole file's ids in one search."""
        _, _, present = self._find(ids)
        if self._recent:
            recent = self._recent
            for i in np.flatnonzero(~present).tolist():
                present[i] = ids[i * ID_SIZE : (i + 1) * ID_SIZE] in recent
        return present

    def locate_many(self, blob_ids: list[bytes]) -> list[BlobLocation | None]:
        recent = self._recent
        which, recs, _ = self._find(blob_ids, want_records=True)
        # Pull the columns out once: building locations from numpy scalars one by one is slow.
        columns = zip(recs["pack"].tolist(), *(recs[c].tolist() for c in _FIELDS), strict=True)
        out: list[BlobLocation | None] = []
        for b, w, (pack, btype, comp, offset, length, plain, within) in zip(
            blob_ids, which.tolist(), columns, strict=True
        ):
            loc = self._recent_location(b) if b in recent else None
            if loc is None and w >= 0:
                loc = BlobLocation(self.pack_ids[pack], btype, comp, offset, length, plain, within)
            out.append(loc)
        return out

    def by_pack(self) -> Iterator[tuple[str, list[tuple[bytes, BlobLocation]]]]:
        """Every indexed blob grouped by pack, in pack order; a bounded number of records in memory."""
        for recs in self.pack_batches():
            bounds = np.flatnonzero(np.diff(recs["pack"])) + 1
            for group in np.split(recs, bounds) if len(recs) else []:
                pack_id = self.pack_ids[int(group[0]["pack"])]
                yield pack_id, [(bytes(g[0]), BlobLocation(pack_id, *g[1:7])) for g in group.tolist()]

    def shared_keys(self) -> npt.NDArray[np.uint64]:
        """The id prefixes (first 8 bytes, big-endian, as a PrefixSet keeps them) that two records
        or more share, sorted and unique. An id whose prefix is not among them is held by one
        record only, so a look-up of it can only answer that record: a caller with the record in
        hand need not ask. Each run is sorted already, so sorting their keys together merges them."""
        self.freeze()
        parts: list[npt.NDArray[np.uint64]] = []
        for run in self._runs:
            if run.recs is not None:
                parts.append(run.keys())
            else:
                parts.extend(
                    _key_view(run.rows(at, at + SLICE)).astype(np.uint64) for at in range(0, run.n, SLICE)
                )
        if not parts:
            return np.zeros(0, dtype=np.uint64)
        keys = np.concatenate(parts)
        keys.sort(kind="stable")  # a merge of sorted runs
        repeated = keys[1:][keys[1:] == keys[:-1]]
        return np.unique(repeated)

    def pack_batches(self) -> Iterator[npt.NDArray[np.void]]:
        """Every indexed record (RUN_RECORD) in batches of whole packs, each sorted by pack number,
        the batches in pack order; about BY_PACK_BATCH records in memory at once (more only when
        one pack holds more).

        The records are read twice whatever the size: once to count them by pack, once to deal
        them into batches of whole packs (in files when there are several), each sorted in turn.
        """
        self.freeze()
        runs = self._runs

        def chunks() -> Iterator[npt.NDArray[np.void]]:
            for run in runs:
                for at in range(0, run.n, BY_PACK_BATCH):
                    yield run.rows(at, at + BY_PACK_BATCH)

        counts = np.zeros(len(self.pack_ids), dtype=np.int64)
        for chunk in chunks():
            counts += np.bincount(chunk["pack"], minlength=len(counts))
        # The first pack of each batch: as many whole packs as fit in one (at least one).
        starts = [0]
        while starts[-1] < len(counts):
            fit = int(np.searchsorted(np.cumsum(counts[starts[-1] :]), BY_PACK_BATCH, "right"))
            starts.append(starts[-1] + max(1, fit))
        batches: list[Callable[[], npt.NDArray[np.void]]]
        if len(starts) <= 2:
            batches = [lambda: np.concatenate([np.zeros(0, dtype=RUN_RECORD), *chunks()])]
        else:
            files = [_RunFile() for _ in starts[:-1]]
            for chunk in chunks():
                batch = np.searchsorted(starts, chunk["pack"], "right") - 1
                order = np.argsort(batch, kind="stable")
                ends = np.cumsum(np.bincount(batch, minlength=len(files)))
                for f, part in zip(files, np.split(_take(chunk, order), ends[:-1]), strict=True):
                    if len(part):
                        f.write(np.ascontiguousarray(part).view(np.uint8).data)
            batches = [f.read_all for f in files]
        for read in batches:
            recs = read()
            yield _take(recs, np.argsort(recs["pack"], kind="stable"))
