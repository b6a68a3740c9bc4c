"""Packs: many sealed blobs in one file, followed by a sealed header that lists them.

Layout: blob_0 .. blob_n-1 | sealed header | u32 LE sealed-header length | b"CPK1".
Header plaintext: for each blob, in file order, 42 bytes:
  u8 type | u8 compression | u32 LE stored length | u32 LE plaintext length | 32-byte blob id.
A blob's offset is the sum of the stored lengths before it. The pack's name is the SHA-256 of its bytes.

A bundle seals several small blobs (database pages) as one: their plaintexts end to end, compressed
as one zstd frame (compression 2) or not (3). Its first member's entry carries the bundle's stored
length, the following members' entries 0; a member's plaintext starts where the previous members'
plaintexts end. One frame for 64 pages compresses better and opens several times faster than 64
(see docs/performance.md, "Bundles of 64 pages").
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import NamedTuple

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.crypto import ID_SIZE, Sealer

PACK_MAGIC = b"CPK1"
TRAILER = struct.Struct("<I4s")
HEADER_ENTRY = struct.Struct("<BBII32s")
HEADER_AAD = b"capsule:pack-header"

BLOB_DATA = 0
BLOB_LIST = 1

COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
BUNDLE_ZSTD = 2
BUNDLE_NONE = 3
BUNDLED = (BUNDLE_ZSTD, BUNDLE_NONE)


def blob_aad(blob_type: int, compression: int, blob_id: bytes) -> bytes:
    return b"capsule:blob" + bytes((blob_type, compression)) + blob_id


def bundle_aad(blob_type: int, compression: int) -> bytes:
    """A bundle's tag covers its type and encoding; each member's id is checked on its plaintext."""
    return b"capsule:bundle" + bytes((blob_type, compression))


class PackedBlob(NamedTuple):
    """Where one blob sits inside its pack, and how to read it back.

    For a member of a bundle, `offset` and `length` are the bundle's, and `within` is where the
    member's plaintext starts in the bundle's plaintext.
    """

    blob_id: bytes
    blob_type: int
    compression: int
    offset: int
    length: int
    plain_length: int
    within: int = 0


class PackBuilder:
    """Collects sealed blobs in memory until the pack is big enough to store.

    Blobs are kept as their header entries end to end, not as objects: a pack holds thousands of
    page-sized blobs, and workers hand over whole runs already in header layout.
    """

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []
        self.header = bytearray()
        self.size = 0

    def add(self, blob_id: bytes, blob_type: int, compression: int, sealed: bytes, plain: int) -> None:
        self.header += HEADER_ENTRY.pack(blob_type, compression, len(sealed), plain, blob_id)
        self._parts.append(sealed)
        self.size += len(sealed)

    def add_run(self, header: bytes | memoryview, sealed: bytes | memoryview) -> None:
        """Add blobs sealed end to end in `sealed`, described by header entries end to end."""
        self.add_runs(header, (sealed,))

    def add_runs(self, header: bytes | memoryview, runs: Sequence[bytes | memoryview]) -> None:
        """Add blobs sealed end to end across `runs` (kept as they are, not copied), described by
        header entries end to end."""
        self.header += header
        for run in runs:
            self._parts.append(run)
            self.size += len(run)

    def __len__(self) -> int:
        return len(self.header) // HEADER_ENTRY.size

    def ids(self) -> list[bytes]:
        return header_ids(self.header)

    def finish(self, sealer: Sealer) -> tuple[str, bytes]:
        """Return (pack id, pack bytes) and reset nothing: a builder makes one pack."""
        pack_id, parts = self.finish_parts(sealer)
        return pack_id, b"".join(parts)

    def finish_parts(self, sealer: Sealer) -> tuple[str, list[bytes | memoryview]]:
        """Return (pack id, the pack's bytes as pieces end to end): `finish` without the copy that
        joins them (`backends.storage.write_parts` stores them as they are)."""
        sealed_header = sealer.seal(bytes(self.header), HEADER_AAD)
        parts = [*self._parts, sealed_header, TRAILER.pack(len(sealed_header), PACK_MAGIC)]
        self._parts = []
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        return digest.hexdigest(), parts


def header_ids(header: bytes | bytearray | memoryview) -> list[bytes]:
    """The blob ids of header entries laid end to end."""
    raw = bytes(header)
    size = HEADER_ENTRY.size
    return [raw[i + size - ID_SIZE : i + size] for i in range(0, len(raw), size)]


def parse_header(
    sealer: Sealer, tail: bytes | memoryview, pack_size: int, pack_name: str
) -> list[PackedBlob]:
    """Read the blob list of a pack from its last bytes (at least the header and trailer)."""
    what = f"the header of pack {pack_name[:12]}"
    if len(tail) < TRAILER.size:
        raise IntegrityError(f"pack {pack_name[:12]} is truncated")
    header_len, magic = TRAILER.unpack(tail[-TRAILER.size :])
    if magic != PACK_MAGIC:
        raise IntegrityError(f"pack {pack_name[:12]} does not end with a pack trailer")
    if header_len + TRAILER.size > min(len(tail), pack_size):
        raise IntegrityError(f"{what} claims an impossible length")
    sealed = tail[-TRAILER.size - header_len : -TRAILER.size]
    header = sealer.open(sealed, HEADER_AAD, what)
    if len(header) % HEADER_ENTRY.size:
        raise IntegrityError(f"{what} has a broken length")
    blobs: list[PackedBlob] = []
    offset = 0
    head: PackedBlob | None = None  # the bundle being read, if any
    within = 0
    for btype, comp, length, plain, blob_id in HEADER_ENTRY.iter_unpack(header):
        if comp in BUNDLED and length == 0:
            if head is None or (head.blob_type, head.compression) != (btype, comp):
                raise IntegrityError(f"{what} lists a bundle member outside a bundle")
            blobs.append(PackedBlob(blob_id, btype, comp, head.offset, head.length, plain, within))
            within += plain
            continue
        if length == 0:
            raise IntegrityError(f"{what} lists a blob with no bytes")
        blob = PackedBlob(blob_id, btype, comp, offset, length, plain)
        blobs.append(blob)
        head, within = (blob, plain) if comp in BUNDLED else (None, 0)
        offset += length
    if offset + header_len + TRAILER.size != pack_size:
        raise IntegrityError(f"{what} does not account for the pack's size")
    return blobs


MAX_HEADER_GUESS = 64 * 1024
assert HEADER_ENTRY.size == 10 + ID_SIZE
