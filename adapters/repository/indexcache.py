"""A local cache of the index a process builds from the index files, sealed under the master key.

Building the index means decrypting and decompressing every index file and sorting their records:
a noticeable share of a core for a large repository, on every command, before a restore writes its
first byte (see docs/performance.md, "Building the index, and its cache"). The cache keeps the
result (the sorted runs, their sparse keys, the Bloom filters of runs in files, and the pack list)
in Capsule's home folder, so that the next command reads it back instead, and decodes only index
files written since.

It is a copy, never the truth: it names the index files it holds and those it knows are superseded,
and is used only when every file it holds is still in the repository, no newer file supersedes one
of them, and the packs it takes for gone are exactly those missing now. Otherwise, or when it cannot
be read, the index files are read as if there were no cache. `capsule verify` never uses it.

Layout: the magic `CIC1`, then frames, each a little-endian u32 length and that many bytes sealed
with the master key (AES-256-GCM, a random nonce first). The associated data of frame i is
`capsule index cache` NUL, the repository id, i as a little-endian u64 and one byte that is 1 on the
last frame: frames cannot be reordered, moved to another repository, or dropped from the end. Frame
0 holds a JSON header; the others, in order, carry one stream cut every FRAME_BYTES: for each run its
sparse keys (little-endian u64), its Bloom filter's bytes if it has one and its records (RUN_RECORD).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.crypto import OVERHEAD, Sealer
from capsule.adapters.repository.index import RUN_RECORD, SLICE, Index, _Bloom, _Run, _RunFile

MAGIC = b"CIC1"
FORMAT = 1
FRAME_BYTES = 4 * 1024 * 1024
_LENGTH = struct.Struct("<I")
_FRAME_AAD = struct.Struct("<QB")


class CacheUnusable(Exception):
    """The cache cannot be read: missing, of another format, damaged or altered."""


@dataclass(frozen=True)
class Cached:
    """An index read from the cache, and which index files it holds and which it skipped."""

    index: Index
    covered: frozenset[str]
    skipped: frozenset[str]


def cache_path(directory: Path, repository_id: str) -> Path:
    return directory / f"index-{repository_id[:32]}"


def _aad(repository_id: str, number: int, last: bool) -> bytes:
    return b"capsule index cache\x00" + repository_id.encode() + _FRAME_AAD.pack(number, last)


def _stream(runs: Iterable[_Run]) -> Iterator[memoryview]:
    for run in runs:
        yield run.sparse.astype("<u8").view(np.uint8).data
        if run.bloom is not None:
            yield run.bloom.bits.data
        for at in range(0, run.n, SLICE):
            yield np.ascontiguousarray(run.rows(at, at + SLICE)).view(np.uint8).data


def save(
    directory: Path,
    repository_id: str,
    sealer: Sealer,
    index: Index,
    *,
    covered: Iterable[str],
    skipped: Iterable[str],
) -> Path:
    """Write the cache of `index`, which holds exactly the records of the index files `covered`,
    through a temporary file and a rename: a reader sees the old cache or the new one, whole."""
    pack_ids, gone, runs = index.state()
    described: list[dict[str, Any]] = [
        {
            "n": r.n,
            "every": r.every,
            "sparse": len(r.sparse),
            "bloom_bits": int(r.bloom.size) if r.bloom is not None else 0,
            "in_file": r.recs is None,
        }
        for r in runs
    ]
    header = {
        "format": FORMAT,
        "record": RUN_RECORD.descr,
        "covered": sorted(covered),
        "skipped": sorted(skipped),
        "packs": pack_ids,
        "gone": gone,
        "runs": described,
    }
    frames = _frame_count(described)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = cache_path(directory, repository_id)
    tmp = directory / f".{path.name}.{secrets.token_hex(4)}"
    try:
        # 0600 like the key file: sealed, but nobody else's business either.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as f:
            f.write(MAGIC)
            number = 0

            def frame(plain: bytes | bytearray) -> None:
                nonlocal number
                sealed = sealer.seal(memoryview(plain), _aad(repository_id, number, number == frames - 1))
                f.write(_LENGTH.pack(len(sealed)))
                f.write(sealed)
                number += 1

            frame(json.dumps(header).encode())
            pending = bytearray()
            for piece in _stream(runs):
                rest = piece
                while len(rest):
                    take = FRAME_BYTES - len(pending)
                    pending += rest[:take]
                    rest = rest[take:]
                    if len(pending) == FRAME_BYTES:
                        frame(pending)
                        pending = bytearray()
            if pending:
                frame(pending)
            if number != frames:
                raise ValueError(f"the index cache came to {number} frames where {frames} were due")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


class _Frames:
    """The cache's stream, frame by frame, each opened and checked as it is reached."""

    def __init__(self, f: BinaryIO, repository_id: str, sealer: Sealer, frames: int) -> None:
        self.f, self.repository_id, self.sealer, self.frames = f, repository_id, sealer, frames
        self.number = 1
        self.buffer = memoryview(b"")

    def _next(self) -> None:
        if self.number >= self.frames:
            raise CacheUnusable("the index cache ends early")
        plain = _read_frame(self.f, self.sealer, self.repository_id, self.number, self.frames)
        self.buffer = memoryview(plain)
        self.number += 1

    def read_into(self, out: memoryview) -> None:
        at = 0
        while at < len(out):
            if not len(self.buffer):
                self._next()
            take = min(len(self.buffer), len(out) - at)
            out[at : at + take] = self.buffer[:take]
            self.buffer = self.buffer[take:]
            at += take

    def chunks(self, length: int) -> Iterator[memoryview]:
        """The next `length` bytes, in pieces as they come."""
        while length:
            if not len(self.buffer):
                self._next()
            take = min(len(self.buffer), length)
            yield self.buffer[:take]
            self.buffer = self.buffer[take:]
            length -= take

    def finish(self) -> None:
        if len(self.buffer) or self.number != self.frames or self.f.read(1):
            raise CacheUnusable("the index cache holds more than its header says")


def _read_frame(f: BinaryIO, sealer: Sealer, repository_id: str, number: int, frames: int) -> bytes:
    raw = f.read(_LENGTH.size)
    if len(raw) != _LENGTH.size:
        raise CacheUnusable("the index cache ends early")
    (length,) = _LENGTH.unpack(raw)
    if length < OVERHEAD or length > FRAME_BYTES + OVERHEAD + (1 << 24):
        raise CacheUnusable("the index cache has a frame of impossible length")
    sealed = f.read(length)
    if len(sealed) != length:
        raise CacheUnusable("the index cache ends early")
    try:
        return sealer.open(sealed, _aad(repository_id, number, number == frames - 1), "the index cache")
    except IntegrityError as e:
        raise CacheUnusable(str(e)) from e


def _frame_count(runs: list[dict[str, Any]]) -> int:
    total = sum(8 * r["sparse"] + -(-r["bloom_bits"] // 8) + r["n"] * RUN_RECORD.itemsize for r in runs)
    return 1 + -(-int(total) // FRAME_BYTES)


def load(
    directory: Path, repository_id: str, sealer: Sealer, *, index_names: set[str], on_disk: set[str]
) -> Cached:
    """The cached index, if it still describes the repository whose index files are
    `index_names` and whose packs are `on_disk`; CacheUnusable otherwise."""
    try:
        f = open(cache_path(directory, repository_id), "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError as e:
        raise CacheUnusable("there is no index cache yet") from e
    except OSError as e:
        raise CacheUnusable(f"the index cache cannot be opened ({e.strerror})") from e
    with f:
        if f.read(len(MAGIC)) != MAGIC:
            raise CacheUnusable("the index cache is of another format")
        # The frame count is not known before the header is read: try the header as the last
        # frame too, as it is when the index is empty.
        start = f.tell()
        try:
            raw = _read_frame(f, sealer, repository_id, 0, 2)
        except CacheUnusable:
            f.seek(start)
            raw = _read_frame(f, sealer, repository_id, 0, 1)
        try:
            header = json.loads(raw)
            return _load_body(f, header, repository_id, sealer, index_names=index_names, on_disk=on_disk)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CacheUnusable(f"the index cache's header is malformed ({e})") from e


def _load_body(
    f: BinaryIO,
    header: dict[str, Any],
    repository_id: str,
    sealer: Sealer,
    *,
    index_names: set[str],
    on_disk: set[str],
) -> Cached:
    if header.get("format") != FORMAT or header.get("record") != json.loads(json.dumps(RUN_RECORD.descr)):
        raise CacheUnusable("the index cache is of another format")
    covered, skipped = frozenset(header["covered"]), frozenset(header["skipped"])
    if not covered <= index_names:
        raise CacheUnusable("an index file the cache holds has left the repository")
    pack_ids: list[str] = header["packs"]
    gone = [i for i, p in enumerate(pack_ids) if p not in on_disk]
    if gone != header["gone"]:
        raise CacheUnusable("packs have gone missing or come back since the cache was written")
    frames = _frame_count(header["runs"])
    if frames == 1 and header["runs"]:
        raise CacheUnusable("the index cache's header is malformed")
    stream = _Frames(f, repository_id, sealer, frames)
    runs = []
    for r in header["runs"]:
        n, every = int(r["n"]), int(r["every"])
        if n < 0 or every < 1 or int(r["sparse"]) != -(-n // every):
            raise CacheUnusable("the index cache's header is malformed")
        sparse = np.empty(int(r["sparse"]), dtype="<u8")
        stream.read_into(sparse.view(np.uint8).data)
        bloom = None
        if int(r["bloom_bits"]):
            bits: npt.NDArray[np.uint8] = np.empty(-(-int(r["bloom_bits"]) // 8), dtype=np.uint8)
            stream.read_into(bits.data)
            bloom = _Bloom.restored(int(r["bloom_bits"]), bits)
        if r["in_file"]:
            if bloom is None:
                raise CacheUnusable("the index cache has a run in a file without its Bloom filter")
            file = _RunFile()
            for piece in stream.chunks(n * RUN_RECORD.itemsize):
                file.write(piece)
            runs.append(_Run(n, every, sparse.astype(np.uint64, copy=False), bloom, recs=None, file=file))
        else:
            recs = np.empty(n, dtype=RUN_RECORD)
            stream.read_into(recs.view(np.uint8).data)
            runs.append(_Run(n, every, sparse.astype(np.uint64, copy=False), None, recs=recs, file=None))
    stream.finish()
    held = [run.recs for run in runs if run.recs is not None]
    if any(int(recs["pack"].max(initial=0)) >= len(pack_ids) for recs in held):
        raise CacheUnusable("the index cache names a pack it does not list")
    return Cached(Index.from_state(pack_ids, header["gone"], runs), covered, skipped)
