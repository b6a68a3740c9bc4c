"""Objects written from their pieces: the local backend stores them end to end without joining them,
through a staging buffer smaller than the object, and a pack's name is the SHA-256 of its file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from capsule.adapters.repository.backends import local
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.adapters.repository.backends.storage import write_parts
from capsule.adapters.repository.crypto import MasterKey, Sealer
from capsule.adapters.repository.pack import BLOB_DATA, COMPRESSION_NONE, PackBuilder, parse_header


def _pieces() -> list[bytes | memoryview]:
    # Sizes that straddle the staging buffer and the 4 KiB alignment: a tail goes through the cache.
    sizes = [1, 4095, 4097, 3 * 4096, 9000, 0, 70_001, 5]
    return [os.urandom(n) if i % 2 else memoryview(os.urandom(n)) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("staging", [4096, 8192, 1 << 20])
def test_pieces_are_written_end_to_end_whatever_the_staging_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, staging: int
) -> None:
    monkeypatch.setattr(local, "STAGING_BYTES", staging)
    monkeypatch.setattr(local, "_staging", type(local._staging)())  # a fresh buffer of that size
    backend = LocalBackend(tmp_path / "repo")
    backend.create_layout()
    pieces = _pieces()
    name = "ab" + "0" * 62

    write_parts(backend, "data", name, pieces)

    assert backend.read("data", name) == b"".join(bytes(p) for p in pieces)
    assert not [p for p in (tmp_path / "repo" / "data" / "ab").iterdir() if p.name.startswith(".tmp-")]


def test_a_backend_without_the_capability_is_given_the_joined_bytes() -> None:
    backend = MemoryBackend()
    pieces = _pieces()

    write_parts(backend, "data", "cd" + "1" * 62, pieces)

    assert backend.read("data", "cd" + "1" * 62) == b"".join(bytes(p) for p in pieces)


def test_a_pack_written_from_its_pieces_is_named_by_the_sha256_of_its_file(tmp_path: Path) -> None:
    sealer = Sealer(MasterKey.generate())
    builder = PackBuilder()
    for i in range(5):
        builder.add(
            bytes([i]) * 32, BLOB_DATA, COMPRESSION_NONE, sealer.seal(os.urandom(5000), b"x"), 5000 - 16
        )
    backend = LocalBackend(tmp_path / "repo")
    backend.create_layout()

    pack_id, parts = builder.finish_parts(sealer)
    write_parts(backend, "data", pack_id, parts)

    stored = backend.read("data", pack_id)
    assert hashlib.sha256(stored).hexdigest() == pack_id
    assert [b.blob_id for b in parse_header(sealer, stored, len(stored), pack_id)] == [
        bytes([i]) * 32 for i in range(5)
    ]
