"""The parent side of the sealing workers: start them, send requests, match replies to futures."""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import IO

from adapters.errors import BlobNotFound, IntegrityError
from adapters.repository.crypto import ID_SIZE, MasterKey
from adapters.sealworker import (
    FRAME,
    HEAD,
    OP_HASH,
    OP_OPEN,
    OP_SEAL,
    OPEN_ITEM,
    SEAL_ITEM,
    SEALED_HEAD,
    STATUS_INTEGRITY,
    STATUS_MISSING,
    STATUS_OK,
    read_frame,
)
from domain.errors import CapsuleError


class WorkerFailed(CapsuleError):
    """Raised when a sealing worker process stops or answers something unexpected."""


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class _Proc:
    def __init__(self, key: MasterKey, level: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "adapters.sealworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.futures: dict[int, Future[bytes]] = {}
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
            payload = body[HEAD.size :]
            if status == STATUS_OK:
                future.set_result(payload)
            elif status == STATUS_INTEGRITY:
                future.set_exception(IntegrityError(payload.decode()))
            elif status == STATUS_MISSING:
                future.set_exception(BlobNotFound(f"a file of the repository is missing: {payload.decode()}"))
            else:
                future.set_exception(WorkerFailed(f"a sealing worker failed: {payload.decode()}"))
        with self.lock:
            self.dead = True
            pending, self.futures = self.futures, {}
        for future in pending.values():
            future.set_exception(WorkerFailed("a sealing worker stopped unexpectedly"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)


class SealPool:
    """A few worker processes; each request goes to the next one in turn."""

    def __init__(self, key: MasterKey, level: int, workers: int | None = None) -> None:
        self._procs = [_Proc(key, level) for _ in range(workers or default_workers())]
        self._ids = itertools.count(1)
        self._turn = itertools.cycle(self._procs)

    def __enter__(self) -> SealPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in self._procs:
            p.close()

    def _submit(self, op: int, fields: bytes) -> Future[bytes]:
        proc = next(self._turn)
        request = next(self._ids)
        future: Future[bytes] = Future()
        with proc.lock:
            if proc.dead:
                raise WorkerFailed("a sealing worker stopped unexpectedly")
            proc.futures[request] = future
        try:
            proc.send(HEAD.pack(op, request) + fields)
        except OSError as e:
            with proc.lock:
                proc.futures.pop(request, None)
            raise WorkerFailed("a sealing worker stopped unexpectedly") from e
        return future

    @staticmethod
    def _path(path: str) -> bytes:
        raw = os.path.abspath(path).encode()
        return FRAME.pack(len(raw)) + raw

    def hash(self, path: str, offset: int, length: int, chunk: int) -> Future[bytes]:
        """Concatenated ids of the chunks of `length` bytes at `offset`."""
        return self._submit(OP_HASH, self._path(path) + struct.pack("<QII", offset, length, chunk))

    def seal(
        self, path: str, blob_type: int, compress: bool, items: list[tuple[int, int, bytes]]
    ) -> Future[bytes]:
        """Sealed blobs for (offset, length, id) items; parse the reply with `split_sealed`."""
        body = [self._path(path), struct.pack("<BBI", blob_type, int(compress), len(items))]
        body.extend(SEAL_ITEM.pack(o, n, i) for o, n, i in items)
        return self._submit(OP_SEAL, b"".join(body))

    def open(self, items: list[tuple[str, int, bytes, int, int, int, int]]) -> Future[bytes]:
        """Plaintexts, end to end, of (pack path, offset, id, type, compression, length, plain) blobs."""
        paths: dict[str, int] = {}
        rows = [OPEN_ITEM.pack(paths.setdefault(p, len(paths)), *rest) for p, *rest in items]
        body = [FRAME.pack(len(paths)), *(self._path(p) for p in paths), FRAME.pack(len(rows)), *rows]
        return self._submit(OP_OPEN, b"".join(body))


def split_sealed(reply: bytes) -> tuple[list[tuple[int, int, int]], memoryview]:
    """A seal reply as ([(compression, plain length, sealed length)], the sealed blobs end to end)."""
    (n,) = struct.unpack_from("<I", reply)
    end = 4 + n * SEALED_HEAD.size
    return list(SEALED_HEAD.iter_unpack(reply[4:end])), memoryview(reply)[end:]


def split_ids(reply: bytes) -> list[bytes]:
    return [reply[i : i + ID_SIZE] for i in range(0, len(reply), ID_SIZE)]
