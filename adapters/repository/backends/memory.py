"""A repository kept in memory: the storage contract with nothing on disk.

The tests run the contract suite and whole repositories on it, which shows that the engine needs
nothing but the contract. It is a real store, not a stand-in: writes replace whole objects under a
lock (a reader sees the old bytes or the new, never a mix), missing objects raise ObjectNotFound as
the local backend does, and names are checked the same way. It offers no `LocalPaths`.

`read_only` makes every write fail as a read-only mount does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from capsule.adapters.errors import ObjectNotFound, RepositoryReadOnly
from capsule.adapters.repository.backends.storage import Kind, ObjectInfo, check_name


class MemoryBackend:
    """Objects in a dict, each an immutable bytes with the time it was written."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.read_only = False
        self._objects: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBackend({self.name!r})"

    def describe(self) -> str:
        return f"memory:{self.name}"

    def _get(self, kind: Kind, name: str) -> tuple[bytes, float]:
        check_name(kind, name)
        try:
            return self._objects[(kind, name)]
        except KeyError:
            raise ObjectNotFound(f"{self.describe()} holds no {kind} object {name[:12]}") from None

    def _check_writable(self) -> None:
        if self.read_only:
            raise RepositoryReadOnly(f"cannot write {self.describe()}: it is read-only", True)

    def create_layout(self) -> None:
        self._check_writable()

    def write(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        check_name(kind, name)
        self._check_writable()
        stored = bytes(data)  # a copy: the caller may reuse its buffer
        with self._lock:
            self._objects[(kind, name)] = (stored, time.time())

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._get(kind, name)[0]
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("a read's offset and length cannot be negative")
        return data[offset:] if length is None else data[offset : offset + length]

    def read_tail(self, kind: Kind, name: str, length: int) -> tuple[int, bytes]:
        data = self._get(kind, name)[0]
        return len(data), data[max(0, len(data) - length) :]

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        data, modified = self._get(kind, name)
        return ObjectInfo(len(data), modified)

    def size(self, kind: Kind, name: str) -> int:
        return len(self._get(kind, name)[0])

    def exists(self, kind: Kind, name: str) -> bool:
        check_name(kind, name)
        return (kind, name) in self._objects

    def list(self, kind: Kind) -> Iterator[str]:
        check_name(kind, "config")
        with self._lock:
            names = [n for k, n in self._objects if k == kind]
        yield from names

    def remove(self, kind: Kind, name: str) -> None:
        check_name(kind, name)
        self._check_writable()
        with self._lock:
            self._objects.pop((kind, name), None)
