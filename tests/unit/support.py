"""Building blocks shared by the unit tests: small repositories in temporary folders, file tampering."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.repo import DEFAULT_PACK_SIZE, Repository


def new_repository(
    root: Path, *, pack_size: int = DEFAULT_PACK_SIZE, passphrase: str | None = None
) -> tuple[Repository, Path]:
    """Create a repository under `root`; return it and the path of its key file."""
    key_file = root / "home" / "repository.key"
    repo = Repository.init(LocalBackend(root / "repo"), key_file, passphrase, pack_size)
    return repo, key_file


def wal_database_of_random_rows(path: Path, rows: int) -> None:
    """Add `rows` rows of 900 random bytes to a WAL database at `path` (created if missing)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    conn.executemany("INSERT INTO t (body) VALUES (randomblob(900))", [()] * rows)
    conn.commit()
    conn.close()


def count_index_reads(repo: Repository) -> list[str]:
    """The names of the index files `repo` decodes from now on, in order, one entry a read."""
    reads: list[str] = []
    load_sealed = repo.load_sealed

    def counting(kind, name):  # type: ignore[no-untyped-def]
        if kind == "index":
            reads.append(name)
        return load_sealed(kind, name)

    repo.load_sealed = counting  # type: ignore[method-assign]
    return reads


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


def count_index_lookups(repo: Repository) -> list[int]:
    """How many ids each look-up of `repo`'s loaded index asks for from now on, one entry a
    look-up: every look-up (`contains`, `contains_many`, `locate_many`, ...) is one search."""
    repo.ensure_index()
    index = repo.index
    asked: list[int] = []
    find = index._find

    def counting(blob_ids, want_records=False):  # type: ignore[no-untyped-def]
        asked.append(len(blob_ids) // ID_SIZE if isinstance(blob_ids, bytes) else len(blob_ids))
        return find(blob_ids, want_records)

    index._find = counting  # type: ignore[method-assign]
    return asked
