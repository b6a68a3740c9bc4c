"""What a restore holds a database's bytes to when its entry has no SHA-256: its pages' keyed ids.

A database snapshot built on its parent's pages leaves the whole file's SHA-256 out of its entry
(computing it would mean reading and hashing every page of every hourly backup). Its entry still
names every byte: each chunk's id is the keyed BLAKE3 of the chunk's plaintext. A restore computes
the id of each chunk it writes, in file order, and compares it with the id the snapshot names at
that place: any byte that differs, wherever it came from, stops the restore before the file is
given its name. Where the entry has a SHA-256, the restore checks that as before.
"""

from __future__ import annotations

import threading
from collections import deque

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.crypto import ID_SIZE, Sealer


class PageIdCheck:
    """Checks bytes given in file order against chunk ids given in the same order.

    `expect` (ids end to end) must be called for a stretch before `update` is given its bytes;
    the two may be called from different threads.
    """

    def __init__(self, sealer: Sealer, chunk: int, path: str) -> None:
        self._sealer = sealer
        self._chunk = chunk
        self._path = path
        self._expected: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._ids = bytearray()  # expected ids not yet matched
        self._pending = bytearray()  # the start of a chunk whose end has not come yet
        self._checked = 0  # chunks matched

    def expect(self, ids: bytes) -> None:
        self._expected.append(ids)

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._pending:
            take = min(len(view), self._chunk - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < self._chunk:
                return
            self._match(self._sealer.blob_ids(memoryview(self._pending), self._chunk))
            self._pending.clear()
        whole = len(view) - len(view) % self._chunk
        if whole:
            self._match(self._sealer.blob_ids(view[:whole], self._chunk))
        if whole < len(view):
            self._pending += view[whole:]

    def finish(self) -> None:
        """Check the last chunk (it may be short) and that every expected id was met."""
        if self._pending:
            self._match(self._sealer.blob_ids(memoryview(self._pending), self._chunk))
            self._pending.clear()
        self._fill(1)
        if self._ids:
            raise IntegrityError(
                f"{self._path} ends after {self._checked} chunk(s) where its snapshot names more: "
                "the restore is incomplete"
            )

    def _fill(self, n: int) -> None:
        while len(self._ids) < n * ID_SIZE and self._expected:
            self._ids += self._expected.popleft()

    def _match(self, got: bytes) -> None:
        self._fill(len(got) // ID_SIZE)
        want = self._ids[: len(got)]
        if got != want:
            bad = next(
                (k for k in range(0, len(got), ID_SIZE) if got[k : k + ID_SIZE] != want[k : k + ID_SIZE]),
                len(want),
            )
            chunk = self._checked + bad // ID_SIZE
            raise IntegrityError(
                f"{self._path}: the bytes restored at offset {chunk * self._chunk} do not match the "
                "snapshot's id for them; the snapshot is damaged or forged, nothing was put in place"
            )
        del self._ids[: len(got)]
        self._checked += len(got) // ID_SIZE
