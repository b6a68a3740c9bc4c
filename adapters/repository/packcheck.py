"""One whole pack checked as `verify --read-data` checks it, in a worker process or in the caller's.

Every check docs/repository-format.md (section 15) asks of a pack and its blobs: the pack's SHA-256
equals its name; its header authenticates and agrees with the index; every blob sealed alone, and
every bundle once for all of its members, authenticates and decompresses to its length; and the
keyed BLAKE3 of every blob's and every member's plaintext equals its id. The pack is read with one
read, and nothing is built per blob but its id's hash: a pack of database pages holds thousands.

The blobs checked are those the index places in the pack (`rows`), at the places the index gives;
a pack no index names is checked by what its own header lists. For the rows marked `want` that
open, the plaintext's length and SHA-256 come back: a file of one blob is checked against them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import zstandard

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.blobcodec import decode_blob, decode_bundle
from capsule.adapters.repository.crypto import ID_SIZE, NATIVE_PIECE_SIZES, Sealer
from capsule.adapters.repository.pack import BUNDLED, parse_header

# A blob as the index places it: offset u64, id, type u8, compression u8, stored length u32,
# plaintext length u32, within u32, want u8 (1: return its plaintext's length and SHA-256).
ROW = struct.Struct("<Q32sBBIIIB")
Row = tuple[int, bytes, int, int, int, int, int, int]
_COUNT = struct.Struct("<I")
_HEAD = struct.Struct("<BBIQ")
_FOUND = struct.Struct("<32sQ32s")


@dataclass
class PackCheck:
    """What one pack's check found."""

    name_matches: bool = True
    header_error: str | None = None
    disagree: list[bytes] = field(default_factory=list)  # ids the header places elsewhere than the index
    bad: list[bytes] = field(default_factory=list)  # ids whose blob fails a check
    blobs: int = 0
    size: int = 0  # the pack's bytes read
    found: list[tuple[bytes, int, bytes]] = field(default_factory=list)  # (id, length, SHA-256) of wanted

    def to_bytes(self) -> bytes:
        error = (self.header_error or "").encode()
        parts = [
            _HEAD.pack(self.name_matches, self.header_error is not None, self.blobs, self.size),
            _COUNT.pack(len(error)),
            error,
            _COUNT.pack(len(self.disagree)),
            *self.disagree,
            _COUNT.pack(len(self.bad)),
            *self.bad,
            _COUNT.pack(len(self.found)),
            *(_FOUND.pack(*f) for f in self.found),
        ]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> PackCheck:
        raw = bytes(raw)
        matches, has_error, blobs, size = _HEAD.unpack_from(raw)
        pos = _HEAD.size
        (n,) = _COUNT.unpack_from(raw, pos)
        error = raw[pos + 4 : pos + 4 + n].decode() if has_error else None
        pos += 4 + n
        lists: list[list[bytes]] = []
        for _ in range(2):
            (n,) = _COUNT.unpack_from(raw, pos)
            pos += 4
            lists.append([raw[pos + i * ID_SIZE : pos + (i + 1) * ID_SIZE] for i in range(n)])
            pos += n * ID_SIZE
        (n,) = _COUNT.unpack_from(raw, pos)
        found = [_FOUND.unpack_from(raw, pos + 4 + i * _FOUND.size) for i in range(n)]
        return cls(bool(matches), error, lists[0], lists[1], blobs, size, found)


def parse_rows(raw: bytes | memoryview) -> list[Row]:
    return list(ROW.iter_unpack(raw))


def check_pack(
    sealer: Sealer,
    decompressor: zstandard.ZstdDecompressor,
    name: str,
    data: bytes | memoryview,
    rows: list[Row],
) -> PackCheck:
    """Check the pack `name` whose bytes are `data`, and the blobs `rows` place in it.

    Rows in pack order (offset, then within) open each bundle once; in another order a bundle is
    opened again for each run of its members, with the same result.
    """
    result = PackCheck(name_matches=hashlib.sha256(data).hexdigest() == name, size=len(data))
    try:
        header = parse_header(sealer, data, len(data), name)
    except IntegrityError as e:
        result.header_error = str(e)
        header = []
    if rows:
        placed = {row[1]: (row[0], row[4], row[5], row[6]) for row in rows}
        for blob in header:
            where = placed.get(blob.blob_id)
            if where is not None and where != (blob.offset, blob.length, blob.plain_length, blob.within):
                result.disagree.append(blob.blob_id)
    else:  # a pack no index names (a backup that crashed): check what its header lists
        rows = [
            (b.offset, b.blob_id, b.blob_type, b.compression, b.length, b.plain_length, b.within, 1)
            for b in header
        ]
    result.blobs = len(rows)
    view = memoryview(data)
    # One keyed hasher, reset after each blob (see Sealer.id_hasher).
    hasher = sealer.id_hasher()
    update, digest, reset = hasher.update, hasher.digest, hasher.reset
    start = 0
    while start < len(rows):
        offset, first_id, btype, comp, length, _, _, _ = rows[start]
        end = start + 1
        if comp in BUNDLED:  # its members that follow, opened once for them all
            while end < len(rows) and rows[end][0] == offset and rows[end][2:5] == (btype, comp, length):
                end += 1
        group = rows[start:end]
        start = end
        sealed = view[offset : offset + length]
        try:
            if len(sealed) != length:
                raise IntegrityError("truncated")
            if comp in BUNDLED:
                bundle = memoryview(
                    decode_bundle(
                        sealer, decompressor, blob_type=btype, compression=comp, sealed=sealed, what=str
                    )
                )
            else:
                plain = group[0][5]
                bundle = memoryview(
                    decode_blob(
                        sealer,
                        decompressor,
                        first_id,
                        blob_type=btype,
                        compression=comp,
                        sealed=sealed,
                        plain_length=plain,
                        what=str,
                    )
                )
        except IntegrityError:
            result.bad.extend(row[1] for row in group)
            continue
        size = len(bundle)
        # A bundle's pages, side by side and of one size: their ids at once (Sealer.blob_ids).
        ids = _ids_side_by_side(sealer, bundle, group)
        if ids is not None and ids == b"".join([row[1] for row in group]) and not any(r[7] for r in group):
            continue  # every member is what its id says, and none is asked for by name
        for k, (_, member_id, _, _, _, plain, within, want) in enumerate(group):
            if within + plain > size:
                result.bad.append(member_id)
                continue
            piece = bundle[within : within + plain]
            if ids is not None:
                got = ids[k * ID_SIZE : (k + 1) * ID_SIZE]
            else:
                update(piece)
                got = digest()
                reset()
            if got != member_id:
                result.bad.append(member_id)
            elif want:
                result.found.append((member_id, plain, hashlib.sha256(piece).digest()))
    return result


def _ids_side_by_side(sealer: Sealer, bundle: memoryview, group: list[Row]) -> bytes | None:
    """The ids of `group`'s members computed together, if they are pieces of one size that follow
    one another in `bundle` and fit in it (as a database backup writes them); else None."""
    if len(group) < 2:
        return None
    first, plain = group[0][6], group[0][5]
    if plain not in NATIVE_PIECE_SIZES or first + len(group) * plain > len(bundle):
        return None
    if any(row[5] != plain or row[6] != first + k * plain for k, row in enumerate(group)):
        return None
    return sealer.blob_ids(bundle[first : first + len(group) * plain], plain)
