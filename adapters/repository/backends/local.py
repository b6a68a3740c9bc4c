"""The local backend: a repository in a folder of this machine, every file written atomically.

It keeps the contract of capsule.adapters.repository.backends.storage, and offers `LocalPaths`:
restore workers open its packs by path. `atomic_write` and `fsync_dir` also serve files outside
the repository (the key file, restored files).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from capsule.adapters.directio import AlignedBuffer, aligned_part, open_direct, write_all
from capsule.adapters.errors import (
    DiskFull,
    ObjectNotFound,
    RepositoryError,
    RepositoryReadOnly,
    StorageUnavailable,
)
from capsule.adapters.repository.backends.storage import (
    ALL_KINDS,
    KINDS,
    Backend,
    Kind,
    ObjectInfo,
    check_name,
)

__all__ = [
    "KINDS",
    "Backend",
    "Kind",
    "LocalBackend",
    "Parts",
    "atomic_write",
    "atomic_write_parts",
    "fsync_dir",
]

# A read-only mount (a USB disk, a NAS snapshot), or a share this user may only read.
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


T = TypeVar("T")


def _disk_error(e: OSError, path: Path, doing: str = "write") -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"the disk holding {path.parent} is full; free some space or choose another "
            "repository location, then run the command again"
        )
    if e.errno in NOT_WRITABLE:
        return RepositoryReadOnly(f"cannot {doing} {path}: {e.strerror or e}", e.errno == errno.EROFS)
    return RepositoryError(f"cannot {doing} {path}: {e.strerror or e}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_staging = threading.local()

STAGING_BYTES = 4 << 20
"""The aligned buffer a direct write copies through, a piece at a time (each writing thread keeps one)."""

Parts = Sequence[bytes | memoryview]
"""An object's bytes as pieces laid end to end (a pack: its blobs' runs, its header, its trailer)."""


def atomic_write(path: Path, data: bytes | memoryview, mode: int = 0o600, *, direct: bool = False) -> None:
    """Write through a temporary file, fsync it, rename it into place and fsync the folder.

    `direct` writes the aligned part around the page cache where the file system allows it (see
    capsule.adapters.directio): packs are written once and seldom read soon after, and a backup should not
    push the shop's own files out of memory.
    """
    atomic_write_parts(path, (data,), mode, direct=direct)


def atomic_write_parts(path: Path, parts: Parts, mode: int = 0o600, *, direct: bool = False) -> None:
    """`atomic_write` of the pieces end to end, without joining them into one buffer first."""
    tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            views = [memoryview(p).cast("B") for p in parts]
            total = sum(len(v) for v in views)
            done = _write_direct(tmp, views, total) if direct else 0
            at = 0
            for view in views:
                if at + len(view) > done:
                    skip = max(0, done - at)
                    write_all(fd, view[skip:], at + skip)
                at += len(view)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _disk_error(e, path) from e


def _write_direct(path: Path, views: list[memoryview], total: int) -> int:
    """Write the aligned start of the pieces to the new file `path` directly, through a staging
    buffer of at most STAGING_BYTES; return how much was written (maybe 0)."""
    head = aligned_part(0, total)
    if not head:
        return 0
    fd = open_direct(str(path), os.O_WRONLY)
    if fd is None:
        return 0
    buffer: AlignedBuffer | None = getattr(_staging, "buffer", None)
    if buffer is None:
        buffer = _staging.buffer = AlignedBuffer()
    try:
        staging = buffer.get(min(head, STAGING_BYTES))
        filled = written = 0
        for view in views:
            taken = 0
            while taken < len(view) and written + filled < head:
                n = min(len(view) - taken, len(staging) - filled, head - written - filled)
                staging[filled : filled + n] = view[taken : taken + n]
                filled, taken = filled + n, taken + n
                if filled == len(staging) or written + filled == head:
                    write_all(fd, staging[:filled], written)
                    written, filled = written + filled, 0
    finally:
        os.close(fd)
    return head


class LocalBackend:
    """A repository in a local folder: `config`, `keys/`, `data/xx/`, `index/`, `snapshots/`, `locks/`.

    Construct it through `open_backend` (capsule.adapters.repository.backends), not directly.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    def describe(self) -> str:
        return str(self.root)

    def _path(self, kind: Kind, name: str) -> Path:
        check_name(kind, name)
        if kind == "config":
            return self.root / "config"
        if kind == "data":
            return self.root / "data" / name[:2] / name
        return self.root / kind / name

    def create_layout(self) -> None:
        try:
            for kind in KINDS:
                (self.root / kind).mkdir(parents=True, exist_ok=True)
            for i in range(256):
                (self.root / "data" / f"{i:02x}").mkdir(exist_ok=True)
        except OSError as e:
            raise _disk_error(e, self.root / "data") from e

    def write(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        self.write_parts(kind, name, (data,))

    def write_parts(self, kind: Kind, name: str, parts: Parts) -> None:
        """`write` of the pieces end to end, never joined into one buffer (the `WritesParts` capability)."""
        path = self._path(kind, name)
        if kind != "config" and not path.parent.exists():
            # Copies made by tools that keep no empty folder (cloud sync, some archivers) lack them.
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _disk_error(e, path.parent) from e
        atomic_write_parts(path, parts, 0o600, direct=kind == "data")

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(kind, name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("a read's offset and length cannot be negative")
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except OSError as e:
            raise _read_error(e, kind, path) from e

    def read_tail(self, kind: Kind, name: str, length: int) -> tuple[int, bytes]:
        path = self._path(kind, name)
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - length))
                return size, f.read()
        except OSError as e:
            raise _read_error(e, kind, path) from e

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        path = self._path(kind, name)
        try:
            st = path.stat()
        except OSError as e:
            raise _read_error(e, kind, path) from e
        return ObjectInfo(st.st_size, st.st_mtime)

    def size(self, kind: Kind, name: str) -> int:
        return self.stat(kind, name).size

    def exists(self, kind: Kind, name: str) -> bool:
        return self._path(kind, name).exists()

    def list(self, kind: Kind) -> Iterator[str]:
        check_name(kind, "config")
        base = self.root / kind
        # os.scandir, not pathlib: the packs' 256 folders are listed at every index load and
        # every prune phase, and a Path made for each entry cost more than the listing itself.
        try:
            if kind == "data":
                for sub in sorted(_entries(base), key=lambda e: e.name):
                    if sub.is_dir():
                        yield from _names(sub.path)
                return
            yield from _names(base)
        except OSError as e:
            raise _read_error(e, kind, base, "list") from e

    def remove(self, kind: Kind, name: str) -> None:
        path = self._path(kind, name)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _disk_error(e, path, "remove") from e

    def remove_temporary(self, older_than: float) -> int:
        """The `TemporaryFiles` capability: `.tmp-*` files left by killed writers, in every folder."""
        folders: list[Path | str] = [self.root, *(self.root / kind for kind in ALL_KINDS if kind != "config")]
        folders.extend(e.path for e in _entries(self.root / "data") if e.is_dir())
        removed = 0
        for folder in folders:
            for entry in _entries(folder):
                if not entry.name.startswith(".tmp-"):
                    continue
                path = Path(entry.path)
                try:
                    if entry.stat().st_mtime < older_than:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise _disk_error(e, path, "remove") from e
        return removed

    def path_of(self, kind: Kind, name: str) -> Path:
        """The file holding (kind, name): the `LocalPaths` capability."""
        return self._path(kind, name)

    @contextlib.contextmanager
    def open_file(self, kind: Kind, name: str) -> Iterator[OpenFile]:
        """The file holding (kind, name), opened once for several reads: the `LocalPaths`
        capability (a repack reads a pack's tail and then its runs: an open each cost more than
        the reads of a small pack)."""
        path = self._path(kind, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _read_error(e, kind, path) from e
        try:
            yield OpenFile(fd, path, kind)
        finally:
            os.close(fd)


class OpenFile:
    """A file of the repository opened for reading (`LocalBackend.open_file`)."""

    def __init__(self, fd: int, path: Path, kind: str) -> None:
        self._fd, self._path, self._kind = fd, path, kind
        self.size = self._call(lambda: os.fstat(fd).st_size)

    def _call(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except OSError as e:
            raise _read_error(e, self._kind, self._path) from e

    def tail(self, length: int) -> bytes:
        return self.read(max(0, self.size - length), min(length, self.size))

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("a read's offset and length cannot be negative")
        return self._call(lambda: os.pread(self._fd, length, offset))


def _entries(folder: Path | str) -> list[os.DirEntry[str]]:
    """The entries of `folder`; none if it does not exist."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _names(folder: Path | str) -> list[str]:
    """The names in `folder` but the hidden ones (temporary files); none if it does not exist."""
    return [e.name for e in _entries(folder) if not e.name.startswith(".")]


def _read_error(e: OSError, kind: str, path: Path, doing: str = "read") -> RepositoryError:
    if isinstance(e, FileNotFoundError):
        return ObjectNotFound(f"{path} is missing (a {kind} object of the repository)")
    return StorageUnavailable(f"cannot {doing} {path}: {e.strerror or e}")
