"""Large writes and reads around the page cache (O_DIRECT) where the system allows it, and read-ahead.

A restore writes each byte of a large file once and reads it back once, to check its SHA-256. Through
the page cache, that means a gigabyte of new cache pages for a file nobody reads soon, taken from the
memory the shop's own programs use, and all writers of one file take turns at its lock while they
copy into them. Direct I/O moves the bytes between a small reused buffer and the disk instead. It
needs the file offset, the length and the buffer's address aligned to ALIGN; whatever is not (the
short end of a file) goes through the page cache as before, and so does everything on a file system
that refuses O_DIRECT. Only the standard library is used: the sealing workers import this.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Sequence

ALIGN = 4096  # covers 512-byte and 4 KiB sectors alike


def open_direct(path: str, flags: int) -> int | None:
    """`path` opened with O_DIRECT added to `flags`, or None where the file system refuses it."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, flags | direct | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


class AlignedBuffer:
    """A page-aligned buffer (an anonymous mapping) that grows as needed and is reused."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def get(self, size: int) -> memoryview:
        if self._map is None or len(self._map) < size:
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(-1, max(ALIGN, -(-size // ALIGN) * ALIGN))
        return memoryview(self._map)[:size]

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
                self._map.close()
            self._map = None


class SharedSlots:
    """Page-aligned slots in memory shared with the worker processes (a memfd they open by path).

    A worker copies a restored piece of file into a slot and writes it from there; the parent reads
    the same bytes there for the file's SHA-256 instead of reading them back from the disk.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.slot_bytes = -(-slot_bytes // ALIGN) * ALIGN
        self.token = int.from_bytes(os.urandom(8), "little")
        self.fd = os.memfd_create("capsule-restore", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.slots * self.slot_bytes)  # pages are only made when written
        self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
        self._map = mmap.mmap(self.fd, self.slots * self.slot_bytes)

    def at(self, slot: int) -> int:
        return slot * self.slot_bytes

    def view(self, at: int, length: int) -> memoryview:
        return memoryview(self._map)[at : at + length]

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()
        os.close(self.fd)


class SlotMap:
    """A worker's mapping of the parent's SharedSlots, made again when the parent's slots change."""

    def __init__(self) -> None:
        self._token = 0
        self._map: mmap.mmap | None = None

    def view(self, path: str, token: int, at: int, length: int) -> memoryview:
        if self._map is None or token != self._token:
            self.close()
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._map = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            self._token = token
        return memoryview(self._map)[at : at + length]

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None


def aligned_part(offset: int, length: int) -> int:
    """How many of the `length` bytes at `offset` direct I/O can move (0 if the offset is not aligned)."""
    if offset % ALIGN:
        return 0
    return length - length % ALIGN


def write_pieces(
    fd: int, direct_fd: int | None, staging: memoryview, pieces: Sequence[bytes | memoryview], offset: int
) -> int:
    """Write `pieces` end to end at `offset`; return the bytes written (all of them, or an error).

    The pieces are first copied to `staging` (page-aligned, at least as long as they are) and written
    from there: directly for the aligned part when `direct_fd` is given. The caller may read them there.
    """
    total = sum(len(p) for p in pieces)
    at = 0
    for piece in pieces:
        staging[at : at + len(piece)] = piece
        at += len(piece)
    head = aligned_part(offset, total) if direct_fd is not None else 0
    if head:
        write_all(direct_fd, staging[:head], offset)  # type: ignore[arg-type]
    if head < total:
        write_all(fd, staging[head:total], offset + head)
    return total


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """`data` written at `offset`, however many system calls it takes."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def read_into(fd: int, direct_fd: int | None, buffer: AlignedBuffer, offset: int, length: int) -> memoryview:
    """`length` bytes at `offset`: the aligned part read directly, the rest through the page cache.

    The view is the buffer's own: use it before the next call.
    """
    view = buffer.get(length)
    head = aligned_part(offset, length) if direct_fd is not None else 0
    done = 0
    while done < length:
        use_direct = done < head
        end = head if use_direct else length
        got = os.preadv(direct_fd if use_direct else fd, [view[done:end]], offset + done)  # type: ignore[arg-type]
        if got <= 0:
            raise EOFError(f"the file ends {offset + done} bytes in, before the {length} bytes asked for")
        done += got
    return view


class Readahead:
    """Asks the kernel to start reading parts of packs that requests will need soon.

    A restore's workers read one blob after another; with the page cache cold, each read would wait
    for the disk in turn. POSIX_FADV_WILLNEED starts the reads of a whole batch at once, in the
    background. Neighbouring ranges of a pack (gaps under GAP bytes) are asked for together.
    """

    GAP = 1024 * 1024
    OPEN = 32

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def ask(self, ranges: Sequence[tuple[str, int, int]]) -> None:
        """`ranges`: (pack path, offset, length), in any order."""
        merged: list[tuple[str, int, int]] = []
        for path, offset, length in sorted(ranges):
            if merged and merged[-1][0] == path and offset <= merged[-1][2] + self.GAP:
                merged[-1] = (path, merged[-1][1], max(merged[-1][2], offset + length))
            else:
                merged.append((path, offset, offset + length))
        for path, start, end in merged:
            fd = self._fd(path)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)

    def _fd(self, path: str) -> int | None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None  # the restore itself reports a missing pack
            while len(self._fds) >= self.OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[path] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
