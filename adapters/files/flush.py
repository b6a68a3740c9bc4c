"""A files restore on disk before it is reported done: what it wrote is flushed, one way or the other.

What must reach the disk for the restore to survive a power cut just after it says it finished:
each file's content and inode (mode, time), its name in its folder (the rename into place), each
folder the restore made with its mode and time, and each made folder's name in its parent, up to
the first folder that was there before the restore began.

A small restore (at most `FLUSH_EACH_MAX` files and links, all written by this process) flushes
exactly those, file by file and folder by folder (fsync). A larger one flushes the whole filesystem
(syncfs), since a run of thousands of fsyncs costs more than one syncfs. The whole filesystem of a
shop's server also holds the till's database and whatever else is being written: syncfs waits for
all of that, so a restore of one image would wait for other programs' writes (tenths of a second
on a busy disk) to flush one image.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path

FLUSH_EACH_MAX = 64
"""Files and links a restore may write and still flush them one by one rather than the filesystem."""


def sync_filesystem(path: Path) -> None:
    """Flush everything written to the filesystem holding `path` (syncfs; sync where it is missing)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    except OSError:
        os.sync()
    finally:
        os.close(fd)


def existing_ancestor(path: Path) -> Path:
    """`path` if it exists, else the nearest folder above it that does (the root at the latest)."""
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def folders_to_flush(to: Path, top: Path, made: Iterable[str], written: Iterable[str]) -> list[Path]:
    """Every folder whose entries, mode or time a restore into `to` changed, deepest first.

    `top` is `to` or the folder above it that existed before the restore (it made the ones between);
    `made` are the folders made under `to` and `written` the files and links put in place, both
    relative to `to`. A folder's own flush records its entries and its inode, not its name in its
    parent: hence the parent of each made folder, up to `top`.
    """
    folders = {to}
    for relative in [*made, *written]:
        path = to / relative
        while path != to:
            path = path.parent
            folders.add(path)
    for relative in made:
        folders.add(to / relative)
    path = to
    while path not in (top, path.parent):
        path = path.parent
        folders.add(path)
    return sorted(folders, key=lambda p: (-len(p.parts), str(p)))


def flush_each(files: Iterable[Path], folders: Iterable[Path]) -> None:
    """fsync each file, then each folder (deepest first, as `folders_to_flush` orders them)."""
    for path in files:
        _fsync(path, os.O_NOFOLLOW)
    for path in folders:
        _fsync(path, os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
