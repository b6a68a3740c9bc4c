"""The parent side of the sealing workers: start them, send requests, match replies to futures."""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, NamedTuple

from capsule.adapters.errors import BlobNotFound, DiskFull, IntegrityError
from capsule.adapters.repository.crypto import ID_SIZE, MasterKey, native_page_ids
from capsule.adapters.repository.pack import HEADER_ENTRY
from capsule.adapters.workers.sealworker import (
    FRAME,
    HEAD,
    OP_CHECK_PACK,
    OP_HASH,
    OP_OPEN_TO,
    OP_RESTORE_FILE,
    OP_SEAL_PIECES,
    OPEN_ITEM,
    OPEN_TO,
    PIECES,
    RESTORE_FILE,
    SEAL_BUNDLE,
    SEAL_COMPRESS,
    STATUS_INTEGRITY,
    STATUS_MISSING,
    STATUS_NO_SPACE,
    STATUS_OK,
    Worker,
    read_frame,
)
from capsule.domain.errors import CapsuleError, Category


class WorkerFailed(CapsuleError):
    """Raised when a sealing worker process stops or answers something unexpected."""

    category = Category.UNAVAILABLE


# Room in each pipe for every request a worker has queued: with the kernel's 64 KiB, sending the
# next request to a busy worker blocked the parent while the other worker sat idle.
PIPE_BYTES = 1024 * 1024


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class _Proc:
    def __init__(self, key: MasterKey, level: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-u", "-m", "capsule.adapters.workers.sealworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pipesize=PIPE_BYTES,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.futures: dict[int, Future[memoryview]] = {}
        self.lock = threading.Lock()
        self.dead = False
        self.send(key.to_bytes() + bytes((level,)))
        self.reader = threading.Thread(target=self._read, name="sealworker-reader", daemon=True)
        self.reader.start()

    def send(self, body: bytes) -> None:
        self.stdin.write(FRAME.pack(len(body)) + body)
        self.stdin.flush()

    def _read(self) -> None:
        while (body := read_frame(self.stdout)) is not None:
            status, request = HEAD.unpack_from(body)
            with self.lock:
                future = self.futures.pop(request)
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up on it (it was cancelled after an error elsewhere)
            payload = memoryview(body)[HEAD.size :]  # a sealed run is half a megabyte: no copy
            if status == STATUS_OK:
                future.set_result(payload)
            else:
                future.set_exception(reply_error(status, payload))
        with self.lock:
            self.dead = True
            pending, self.futures = self.futures, {}
        for future in pending.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(WorkerFailed("a sealing worker stopped unexpectedly"))

    def hang_up(self) -> None:
        """Close the worker's input: it finishes what it has and exits."""
        with contextlib.suppress(OSError):
            self.stdin.close()

    def close(self) -> None:
        self.hang_up()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)


def reply_error(status: int, payload: memoryview) -> CapsuleError:
    """The error a worker's reply of `status` (not STATUS_OK) stands for."""
    said = bytes(payload).decode()
    if status == STATUS_INTEGRITY:
        return IntegrityError(said)
    if status == STATUS_MISSING:
        return BlobNotFound(f"a file of the repository is missing: {said}")
    if status == STATUS_NO_SPACE:
        return DiskFull(f"the disk is full ({said}); free space and retry")
    return WorkerFailed(f"a sealing worker failed: {said}")


class SealPool:
    """A few worker processes; each request goes to the one with the fewest outstanding."""

    def __init__(self, key: MasterKey, level: int, workers: int | None = None) -> None:
        self._procs = [_Proc(key, level) for _ in range(workers or default_workers())]
        self._ids = itertools.count(1)

    def __enter__(self) -> SealPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in self._procs:  # all of them exit at once, not one after the other
            p.hang_up()
        for p in self._procs:
            p.close()

    def _submit(self, op: int, fields: bytes) -> Future[memoryview]:
        return self._submit_many(op, [fields])[0]

    def _submit_many(self, op: int, many: list[bytes]) -> list[Future[memoryview]]:
        """Send each request to the worker with the fewest outstanding, one write to each worker
        for all of its share."""
        futures: list[Future[memoryview]] = []
        frames: dict[_Proc, list[bytes]] = {}
        for fields in many:
            proc = min(self._procs, key=lambda p: len(p.futures))
            request = next(self._ids)
            future: Future[memoryview] = Future()
            with proc.lock:
                if proc.dead:
                    raise WorkerFailed("a sealing worker stopped unexpectedly")
                proc.futures[request] = future
            body = HEAD.pack(op, request) + fields
            frames.setdefault(proc, []).extend((FRAME.pack(len(body)), body))
            futures.append(future)
        for proc, parts in frames.items():
            try:
                proc.stdin.write(b"".join(parts))
                proc.stdin.flush()
            except OSError as e:
                raise WorkerFailed("a sealing worker stopped unexpectedly") from e
        return futures

    @staticmethod
    def _path(path: str) -> bytes:
        raw = os.path.abspath(path).encode() if path else b""
        return FRAME.pack(len(raw)) + raw

    def hash(self, path: str, offset: int, length: int, chunk: int) -> Future[memoryview]:
        """Concatenated ids of the chunks of `length` bytes at `offset`."""
        return self._submit(OP_HASH, self._path(path) + struct.pack("<QII", offset, length, chunk))

    def seal_pieces(
        self,
        path: str,
        blob_type: int,
        compress: bool,
        block: tuple[int, int, int],
        *,
        indices: list[int],
        ids: bytes,
        bundle: bool = False,
    ) -> Future[memoryview]:
        """Sealed blobs for some of the `chunk`-sized pieces of the block (offset, length, chunk):
        those at `indices`, whose ids are `ids` end to end. Parse the reply with `split_sealed`.
        `bundle` seals them together in bundles (see repository/pack.py), for repositories that allow it."""
        offset, length, chunk = block
        flags = (SEAL_COMPRESS if compress else 0) | (SEAL_BUNDLE if bundle else 0)
        fields = PIECES.pack(blob_type, flags, offset, length, chunk, len(indices))
        body = [self._path(path), fields, struct.pack(f"<{len(indices)}I", *indices), ids]
        return self._submit(OP_SEAL_PIECES, b"".join(body))

    def open_to(
        self, out_path: str, offset: int, request: bytes, slot: tuple[str, int, int, int] | None = None
    ) -> Future[memoryview]:
        """Open the blobs of `request` (see `open_request`) and write their plaintexts end to end
        into the existing file `out_path` at `offset`; the reply is the u64 count written.

        `slot` (shared slots' path, token, slot offset, slot length) also leaves them there."""
        path, token, at, length = slot or ("", 0, 0, 0)
        fields = OPEN_TO.pack(offset, token, at, length)
        return self._submit(OP_OPEN_TO, self._path(out_path) + fields + self._path(path) + request)

    def restore_files(self, files: list[RestoreFile]) -> list[Future[memoryview]]:
        """For each file: open the blobs of its request, check them against its size and SHA-256,
        write them to its temporary path (which must not exist) and rename that to its final path;
        each reply is the u64 count written."""
        return self._submit_many(
            OP_RESTORE_FILE,
            [
                self._path(f.final)
                + self._path(f.tmp)
                + RESTORE_FILE.pack(f.mode & 0o7777, f.mtime_ns, f.size, bytes.fromhex(f.sha256))
                + f.request
                for f in files
            ],
        )

    def check_pack(self, path: str, name: str, rows: bytes) -> Future[memoryview]:
        """Read the pack `name` at `path` whole and check it and the blobs `rows` place in it
        (see repository/packcheck.py); the reply is a `PackCheck` as bytes."""
        return self._submit(OP_CHECK_PACK, self._path(path) + name.encode("ascii") + rows)


class RestoreFile(NamedTuple):
    """One file for `SealPool.restore_files`."""

    final: str
    tmp: str
    mode: int
    mtime_ns: int
    size: int
    sha256: str
    request: bytes


def open_request(paths: list[str], rows: bytes) -> bytes:
    """The body of an open request: pack paths, then `rows` in OPEN_ITEM layout end to end."""
    parts = [FRAME.pack(len(paths)), *(SealPool._path(p) for p in paths)]
    parts += [FRAME.pack(len(rows) // OPEN_ITEM.size), rows]
    return b"".join(parts)


def split_sealed(reply: bytes | memoryview) -> tuple[memoryview, memoryview]:
    """A seal reply as (pack-header entries end to end, the sealed blobs end to end)."""
    (n,) = struct.unpack_from("<I", reply)
    end = 4 + n * HEADER_ENTRY.size
    view = memoryview(reply)
    return view[4:end], view[end:]


def split_ids(reply: bytes | memoryview) -> list[bytes]:
    raw = bytes(reply)
    return [raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)]


class ThreadSealPool(SealPool):
    """The same requests answered by threads of this process, each with a `Worker` of its own: no
    process to start, no module loaded again, no reply copied through a pipe. For work that leaves
    the interpreter's lock free most of the time (see `database_pool`); one Python call for each
    small blob wants the processes (see sealworker)."""

    def __init__(self, key: MasterKey, level: int, workers: int | None = None) -> None:
        self._key, self._level = key, level
        self._local = threading.local()
        self._threads = ThreadPoolExecutor(workers or default_workers(), thread_name_prefix="seal")
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    def _submit_many(self, op: int, many: list[bytes]) -> list[Future[memoryview]]:
        return [self._threads.submit(self._answer, HEAD.pack(op, next(self._ids)) + f) for f in many]

    def _answer(self, body: bytes) -> memoryview:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = Worker(self._key, self._level)
        reply = worker.handle(body)
        status, _ = HEAD.unpack_from(reply)
        payload = memoryview(reply)[HEAD.size :]
        if status != STATUS_OK:
            raise reply_error(status, payload)
        return payload


def database_pool(key: MasterKey, level: int, workers: int | None = None, *, parent: bool) -> SealPool:
    """The pool a database backup hashes and seals its pages with. Threads where the pages are
    hashed natively and the backup has a parent snapshot (it seals what changed, a little): the
    hasher, the reads, zstd and AES-GCM on a bundle of pages leave the interpreter's lock free, no
    process starts and no sealed run crosses a pipe, for less processor time (docs/performance.md,
    "A database backup's pages hashed and sealed on threads"). Worker processes for a first backup,
    which seals every page: on threads the backup's own process would hold the workers' memory
    too, and a large database's first backup is the one nearest the memory target. Worker
    processes also where one `blake3` call a page holds the lock."""
    kind = ThreadSealPool if parent and native_page_ids() else SealPool
    return kind(key, level, workers)
