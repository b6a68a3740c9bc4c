"""The SHA-256 of a file as it is on disk, read a block at a time into one buffer.

A restore checks a file it finds in place against the snapshot with it, the drill the files it
restored, the database's backup the copy it stored: none of them needs another's engine for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1024 * 1024


def sha256_file(path: Path, size: int | None = None) -> str:
    """The SHA-256 of the file's first `size` bytes (all of them if None)."""
    sha = hashlib.sha256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    left = -1 if size is None else size  # -1: to the end
    with open(path, "rb", buffering=0) as f:
        while left:
            n = f.readinto(view[: BLOCK if left < 0 else min(BLOCK, left)])
            if not n:
                break
            sha.update(view[:n])
            if left > 0:
                left -= n
    if left > 0:
        raise OSError(f"{path} is shorter than expected")
    return sha.hexdigest()
