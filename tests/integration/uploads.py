"""A product images folder for tests, and a description of a folder to compare two trees by."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
PNG = b"\x89PNG\r\n\x1a\n"
TIME_NS = 1_764_000_000_123_456_789


def make_uploads(folder: Path, *, big: int = 0) -> None:
    """Nested folders, several modes and times, links, an empty file and an empty folder.

    `big` bytes of random video come first in walk order, so a backup stores packs of it before
    anything else is done.
    """
    items: dict[str, tuple[bytes, int]] = {
        "cat1/red.jpg": (JPEG + os.urandom(300 * 1024), 0o644),
        "cat1/blue.jpg": (JPEG + b"\xff\xfe\x00blue" * 100, 0o600),
        "cat1/notes.txt": (b"restock on monday\n" * 50, 0o640),
        "cat2/deep/green.png": (PNG + os.urandom(2048), 0o644),
        "tools/resize.sh": (b"#!/bin/sh\nexit 0\n", 0o755),
        "empty-file.jpg": (b"", 0o644),
    }
    if big:
        # The same bytes every time: how the video splits into chunks, and so into packs, is fixed.
        items["a-video.mp4"] = (b"\x00\x00\x00\x18ftypmp42" + random.Random(big).randbytes(big), 0o644)
    for number, (relative, (data, mode)) in enumerate(sorted(items.items())):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, ns=(TIME_NS, TIME_NS + number * 1_000_001))
    (folder / "empty-folder").mkdir()
    os.symlink("cat1/red.jpg", folder / "featured.jpg")
    os.symlink("/etc/hostname", folder / "absolute-link")
    os.chmod(folder / "cat2", 0o750)


def describe_tree(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Every item under `folder` as (kind, mode, modification time, bytes) or ("link", target)."""
    out: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            st = os.lstat(path)
            relative = str(path.relative_to(folder))
            if path.is_symlink():
                out[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                out[relative] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                out[relative] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, path.read_bytes())
    return out
