"""Worker processes that hash, compress, seal and open blobs, so that both cores do real work.

Threads share one interpreter lock, and per-page work (4 KiB blobs) is dominated by Python calls
around zstd, AES-GCM and BLAKE3; separate processes run them side by side. A worker reads the bytes
it works on straight from the staging copy or the pack files, and writes restored plaintext straight
into its file, so only ids, sealed blobs and byte counts cross the pipe. It imports nothing heavier
than those three libraries, and receives the master key over its stdin, never through arguments or
the environment. A database backup with a parent snapshot, where its pages are hashed natively,
has the same `Worker` answer the same requests on threads of its own process instead
(`sealpool.database_pool`).

Frames, both ways: u32 LE length, then the body. The first frame to a worker is the key (64 bytes)
followed by a u8 compression level. Requests: u8 op, u32 request id, then the op's fields; replies:
u8 status (0 ok, 1 integrity error, 2 file missing, 3 other error), u32 request id, payload.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import os
import signal
import struct
import sys
from typing import IO

import zstandard

from capsule.adapters.directio import AlignedBuffer, SlotMap, open_direct, write_pieces
from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.blobcodec import decode_blob, decode_bundle, encode_blob, encode_bundle
from capsule.adapters.repository.crypto import ID_SIZE, NONCE_SIZE, MasterKey, Sealer
from capsule.adapters.repository.pack import BUNDLED, HEADER_ENTRY
from capsule.adapters.repository.packcheck import check_pack, parse_rows

OP_HASH = 1  # path, offset u64, length u32, chunk u32 -> concatenated 32-byte ids
# path, type u8, flags u8, offset u64, length u32, chunk u32, n u32, n x index u32, n x id 32
#   -> n u32, n pack-header entries (see pack.HEADER_ENTRY), then the sealed blobs end to end, for
#   the chunks at those indices of the `chunk`-sized pieces of one block. Flags: 1 compress,
#   2 seal neighbouring chunks together in bundles of up to BUNDLE_BYTES
OP_SEAL_PIECES = 4
# out path, out offset u64, slots token u64, slot offset u64, slot length u32, slots path, n paths
#   u32, paths, n u32, n x (path index u32, offset u64, id 32, type u8, comp u8, length u32, plain
#   u32, within u32) -> u64 bytes written: the plaintexts end to end go into that file (which must
#   exist) at that offset, in request order, by way of the parent's shared slot when the slot is
#   long enough (see directio.SharedSlots; length 0 for none)
OP_OPEN_TO = 5

# final path, temp path, mode u32, mtime_ns i64, size u64, sha256 32, then the blobs as for
#   OP_OPEN_TO -> u64 bytes written: the file is checked whole in memory, then written to the temp
#   path (created, never followed), given its mode and time, and renamed to the final path
OP_RESTORE_FILE = 6

FRAME = struct.Struct("<I")
HEAD = struct.Struct("<BI")
PIECES = struct.Struct("<BBQIII")
OPEN_ITEM = struct.Struct("<IQ32sBBIII")
OPEN_TO = struct.Struct("<QQQI")
SEAL_COMPRESS, SEAL_BUNDLE = 1, 2
# Plaintext per bundle: 64 database pages. zstd opens a page from a frame this size in about half
# the time it takes from a frame of its own, and larger frames gain little more (see
# docs/performance.md, "Bundles of 64 pages").
BUNDLE_BYTES = 256 * 1024
RESTORE_FILE = struct.Struct("<IqQ32s")
# path, pack name (64 hex digits), then rows (see repository/packcheck.ROW) end to end -> a
#   PackCheck: the whole pack read with one read and checked as `verify --read-data` does
OP_CHECK_PACK = 7

OPEN_PACKS = 16
# A seal request for fewer than one piece in this many of its block reads those pieces alone.
SPARSE_PIECES = 8
OPEN_BUNDLES = 8  # bundles kept opened: a file's pages may alternate between a few of them

STATUS_OK, STATUS_INTEGRITY, STATUS_MISSING, STATUS_ERROR, STATUS_NO_SPACE = 0, 1, 2, 3, 4


def read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(FRAME.pack(len(body)) + body)
    stream.flush()


def _path(body: bytes, pos: int) -> tuple[str, int]:
    (n,) = FRAME.unpack_from(body, pos)
    return body[pos + 4 : pos + 4 + n].decode(), pos + 4 + n


def _blob_name(path: str, item: tuple[int, int, bytes, int, int, int, int, int]) -> str:
    return f"blob {item[2].hex()[:12]} in pack {os.path.basename(path)[:12]}"


def _pread(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _pread_pieces(path: str, pieces: list[tuple[int, int]]) -> bytes:
    """The (offset, length) pieces of the file, end to end."""
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        for offset, length in pieces:
            got = os.pread(fd, length, offset)
            if len(got) != length:
                raise OSError(f"{path} is shorter than expected")
            out += got
        return bytes(out)
    finally:
        os.close(fd)


class Worker:
    def __init__(self, key: MasterKey, level: int) -> None:
        self.sealer = Sealer(key)
        self.compressor = zstandard.ZstdCompressor(level=level)
        self.decompressor = zstandard.ZstdDecompressor()
        self._packs: dict[str, int] = {}
        self._bundles: dict[tuple[str, int], bytes] = {}
        self._buffer = AlignedBuffer()  # for direct writes of restored files
        self._slots = SlotMap()  # the parent's shared slots, when it gives one
        # Each pack checked is read into this, not into new memory: faulting in a whole pack
        # afresh for every pack cost more system time than the read itself.
        self._pack_buffer = bytearray()
        self._hash_buffer = bytearray()

    def hash(self, body: bytes, pos: int) -> bytes:
        path, pos = _path(body, pos)
        offset, length, chunk = struct.unpack_from("<QII", body, pos)
        # Into the same buffer every time: new memory for each block is faulted in page by page.
        if len(self._hash_buffer) < length:
            self._hash_buffer = bytearray(length)
        data = memoryview(self._hash_buffer)[:length]
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [data], offset)
        finally:
            os.close(fd)
        if got != length:
            raise OSError(f"{path} is shorter than expected")
        return self.sealer.blob_ids(data, chunk)

    def seal_pieces(self, body: bytes, pos: int) -> bytes:
        path, pos = _path(body, pos)
        blob_type, flags, offset, length, chunk, n = PIECES.unpack_from(body, pos)
        pos += PIECES.size
        indices = struct.unpack_from(f"<{n}I", body, pos)
        ids = body[pos + 4 * n : pos + 4 * n + ID_SIZE * n]
        lengths = [min(chunk, length - i * chunk) for i in indices]
        if n * SPARSE_PIECES > length // chunk:
            data = _pread(path, offset, length)
            if len(data) != length:
                raise OSError(f"{path} is shorter than expected")
            items = [
                (offset + i * chunk, size, ids[k * ID_SIZE : (k + 1) * ID_SIZE])
                for k, (i, size) in enumerate(zip(indices, lengths, strict=True))
            ]
        else:
            # A few pieces of the block (an hourly backup's changed pages): read those alone, end
            # to end, instead of the whole block again.
            data = _pread_pieces(
                path, [(offset + i * chunk, size) for i, size in zip(indices, lengths, strict=True)]
            )
            offset = 0
            starts = list(itertools.accumulate(lengths, initial=0))[:-1]
            items = [
                (at, size, ids[k * ID_SIZE : (k + 1) * ID_SIZE])
                for k, (at, size) in enumerate(zip(starts, lengths, strict=True))
            ]
        if flags & SEAL_BUNDLE:
            return self._seal_bundles(data, offset, items, blob_type, flags & SEAL_COMPRESS)
        return self._seal_items(data, offset, items, blob_type, flags & SEAL_COMPRESS)

    def _seal_items(
        self, data: bytes, start: int, items: list[tuple[int, int, bytes]], blob_type: int, compress: int
    ) -> bytes:
        n = len(items)
        table = [struct.pack("<I", n)]
        out = []
        nonces = os.urandom(NONCE_SIZE * n)  # one system call for the whole request
        compressor = self.compressor if compress else None
        for k, (offset, length, blob_id) in enumerate(items):
            chunk = data[offset - start : offset - start + length]
            nonce = nonces[k * NONCE_SIZE : (k + 1) * NONCE_SIZE]
            compression, sealed = encode_blob(self.sealer, compressor, blob_type, blob_id, chunk, nonce=nonce)
            table.append(HEADER_ENTRY.pack(blob_type, compression, len(sealed), len(chunk), blob_id))
            out.append(sealed)
        return b"".join(table + out)

    def _seal_bundles(
        self, data: bytes, start: int, items: list[tuple[int, int, bytes]], blob_type: int, compress: int
    ) -> bytes:
        """The items in bundles of up to BUNDLE_BYTES of plaintext, in order; one alone is a blob."""
        groups: list[list[tuple[int, int, bytes]]] = []
        size = BUNDLE_BYTES
        for item in items:
            if size + item[1] > BUNDLE_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += item[1]
        table = [struct.pack("<I", len(items))]
        out = []
        view = memoryview(data)
        compressor = self.compressor if compress else None
        for group in groups:
            if len(group) == 1:
                sealed_one = self._seal_items(data, start, group, blob_type, compress)
                table.append(sealed_one[4 : 4 + HEADER_ENTRY.size])
                out.append(sealed_one[4 + HEADER_ENTRY.size :])
                continue
            plain = b"".join(view[o - start : o - start + n] for o, n, _ in group)
            compression, sealed = encode_bundle(self.sealer, compressor, blob_type, plain)
            stored = len(sealed)
            for _, length, blob_id in group:
                table.append(HEADER_ENTRY.pack(blob_type, compression, stored, length, blob_id))
                stored = 0  # members after the first carry no stored bytes of their own
            out.append(sealed)
        return b"".join(table + out)

    def open_to(self, body: bytes, pos: int) -> bytes:
        out_path, pos = _path(body, pos)
        offset, token, slot_at, slot_length = OPEN_TO.unpack_from(body, pos)
        slots_path, pos = _path(body, pos + OPEN_TO.size)
        pieces = self._open_items(body, pos)
        total = sum(len(piece) for piece in pieces)
        if slot_length >= total:
            staging = self._slots.view(slots_path, token, slot_at, slot_length)
        else:
            staging = self._buffer.get(total)
        fd = os.open(out_path, os.O_WRONLY | os.O_CLOEXEC)
        direct = open_direct(out_path, os.O_WRONLY)
        try:
            written = write_pieces(fd, direct, staging, pieces, offset)
        finally:
            os.close(fd)
            if direct is not None:
                os.close(direct)
        return struct.pack("<Q", written)

    def _read_pack(self, path: str, offset: int, length: int) -> bytes:
        """Bytes of a pack; the last few packs stay open (a restore reads each many times in a row)."""
        fd = self._packs.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            while len(self._packs) >= OPEN_PACKS:
                os.close(self._packs.pop(next(iter(self._packs))))
        self._packs[path] = fd  # most recently used last
        return os.pread(fd, length, offset)

    def restore_file(self, body: bytes, pos: int) -> bytes:
        final, pos = _path(body, pos)
        tmp, pos = _path(body, pos)
        mode, mtime_ns, size, digest = RESTORE_FILE.unpack_from(body, pos)
        pieces = self._open_items(body, pos + RESTORE_FILE.size)
        sha = hashlib.sha256()
        for piece in pieces:
            sha.update(piece)
        if sum(len(p) for p in pieces) != size or sha.digest() != digest:
            raise IntegrityError(f"{final} does not match its snapshot (SHA-256 differs)")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                for piece in pieces:
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return struct.pack("<Q", size)

    def check_pack(self, body: bytes, pos: int) -> bytes:
        path, pos = _path(body, pos)
        name = body[pos : pos + 64].decode("ascii")
        with open(path, "rb", buffering=0) as f:
            data = self._read_whole(f)
        rows = parse_rows(memoryview(body)[pos + 64 :])
        try:
            return check_pack(self.sealer, self.decompressor, name, data, rows).to_bytes()
        finally:
            data.release()  # the buffer may grow for the next pack only if no view is left on it

    def _read_whole(self, f: io.FileIO) -> memoryview:
        """The whole of `f`, read into the worker's pack buffer (grown when a file is larger)."""
        size = os.fstat(f.fileno()).st_size
        if len(self._pack_buffer) <= size:
            # With room to spare: packs of one nominal size differ by a few per cent, and each
            # larger one would otherwise fault in a new buffer.
            self._pack_buffer = bytearray(size + size // 8 + 1)
        view = memoryview(self._pack_buffer)
        got = 0
        while True:
            if got == len(view):  # longer than it was a moment ago: read it whole anyway
                view.release()
                self._pack_buffer += f.read()
                return memoryview(self._pack_buffer)
            n = f.readinto(view[got:])
            if not n:
                return view[:got]
            got += n

    def _open_items(self, body: bytes, pos: int) -> list[bytes | memoryview]:
        (n_paths,) = FRAME.unpack_from(body, pos)
        pos += 4
        paths = []
        for _ in range(n_paths):
            path, pos = _path(body, pos)
            paths.append(path)
        (n,) = FRAME.unpack_from(body, pos)
        pos += 4
        items = list(OPEN_ITEM.iter_unpack(memoryview(body)[pos : pos + n * OPEN_ITEM.size]))
        out: list[bytes | memoryview] = []
        start = 0
        while start < n:
            first = items[start]
            end = start + 1
            if first[4] in BUNDLED:
                # Members that follow each other in the bundle's plaintext are one slice of it.
                until = first[7] + first[6]
                while end < n and items[end][:2] == first[:2] and items[end][7] == until:
                    until += items[end][6]
                    end += 1
                bundle = self._bundle(paths[first[0]], first)
                if until > len(bundle):
                    raise IntegrityError(
                        f"{_blob_name(paths[first[0]], first)} lies beyond the end of its bundle"
                    )
                out.append(memoryview(bundle)[first[7] : until])
                start = end
                continue
            # One read for each run of blobs sealed alone that lie end to end in one pack.
            while (
                end < n
                and items[end][0] == first[0]
                and items[end][4] not in BUNDLED
                and items[end][1] == items[end - 1][1] + items[end - 1][5]
            ):
                end += 1
            path = paths[first[0]]
            last = items[end - 1]
            view = memoryview(self._read_pack(path, first[1], last[1] + last[5] - first[1]))
            for item in items[start:end]:
                at = item[1] - first[1]
                out.append(self._open_one(path, view[at : at + item[5]], item))
            start = end
        return out

    def _open_one(
        self, path: str, sealed: memoryview, item: tuple[int, int, bytes, int, int, int, int, int]
    ) -> bytes:
        _, _, blob_id, blob_type, comp, stored, plain, _ = item

        def what() -> str:
            return _blob_name(path, item)

        if len(sealed) != stored:
            raise IntegrityError(f"{what()} is truncated")
        return decode_blob(
            self.sealer,
            self.decompressor,
            blob_id,
            blob_type=blob_type,
            compression=comp,
            sealed=sealed,
            plain_length=plain,
            what=what,
        )

    def _bundle(self, path: str, item: tuple[int, int, bytes, int, int, int, int, int]) -> bytes:
        """The plaintext of the bundle holding `item`, read and opened once for all of its members
        that are read soon after."""
        _, offset, _, blob_type, comp, stored, _, _ = item
        key = (path, offset)
        data = self._bundles.pop(key, None)
        if data is None:
            sealed = self._read_pack(path, offset, stored)

            def what() -> str:
                return _blob_name(path, item)

            if len(sealed) != stored:
                raise IntegrityError(f"{what()} is truncated")
            data = decode_bundle(
                self.sealer,
                self.decompressor,
                blob_type=blob_type,
                compression=comp,
                sealed=sealed,
                what=what,
            )
            while len(self._bundles) >= OPEN_BUNDLES:
                del self._bundles[next(iter(self._bundles))]
        self._bundles[key] = data  # most recently used last
        return data

    def handle(self, body: bytes) -> bytes:
        op, request = HEAD.unpack_from(body)
        try:
            if op == OP_HASH:
                result = self.hash(body, HEAD.size)
            elif op == OP_SEAL_PIECES:
                result = self.seal_pieces(body, HEAD.size)
            elif op == OP_OPEN_TO:
                result = self.open_to(body, HEAD.size)
            elif op == OP_RESTORE_FILE:
                result = self.restore_file(body, HEAD.size)
            elif op == OP_CHECK_PACK:
                result = self.check_pack(body, HEAD.size)
            else:
                raise ValueError(f"unknown operation {op}")
            return HEAD.pack(STATUS_OK, request) + result
        except IntegrityError as e:
            return HEAD.pack(STATUS_INTEGRITY, request) + str(e).encode()
        except FileNotFoundError as e:
            return HEAD.pack(STATUS_MISSING, request) + str(e).encode()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                return HEAD.pack(STATUS_ERROR, request) + f"{type(e).__name__}: {e}".encode()
            return HEAD.pack(STATUS_NO_SPACE, request) + str(e).encode()
        except Exception as e:  # reported to the parent, which raises it there
            return HEAD.pack(STATUS_ERROR, request) + f"{type(e).__name__}: {e}".encode()


def main() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and closes our pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    init = read_frame(stdin)
    if init is None:
        return
    worker = Worker(MasterKey.from_bytes(init[:64]), init[64])
    try:
        while (body := read_frame(stdin)) is not None:
            write_frame(stdout, worker.handle(body))
    except BrokenPipeError:
        # The parent died (killed mid-step) while we answered: nobody is left to read the reply,
        # and a traceback on the terminal it shared with us would only look like a second failure.
        os._exit(0)
    # Every reply is written and flushed: leave without the interpreter's teardown, which the
    # parent would wait for at the end of every backup and restore (see docs/performance.md,
    # "Workers leave without teardown").
    stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
