"""Building blocks shared by the unit tests: small repositories in temporary folders, file tampering."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from adapters.repository.backend import LocalBackend
from adapters.repository.repo import DEFAULT_PACK_SIZE, Repository


def new_repository(
    root: Path, *, pack_size: int = DEFAULT_PACK_SIZE, passphrase: str | None = None
) -> tuple[Repository, Path]:
    """Create a repository under `root`; return it and the path of its key file."""
    key_file = root / "home" / "repository.key"
    repo = Repository.init(LocalBackend(root / "repo"), key_file, passphrase, pack_size)
    return repo, key_file


def reopen(repo: Repository, key_file: Path) -> Repository:
    """A second, independent handle on the same repository, reading everything from disk."""
    return Repository.open(LocalBackend(repo.backend.root), key_file)


def flip_bit(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@contextlib.contextmanager
def replaced(path: Path, content: bytes) -> Iterator[None]:
    """Put `content` in `path` for the duration of the block, then put the original back."""
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)
