"""What only the local backend can meet: a folder that is not what it should be."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule.adapters.errors import StorageUnavailable
from capsule.adapters.repository.backends import open_backend
from capsule.domain.errors import Category


def test_a_store_that_cannot_be_read_is_unavailable_and_says_where(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = open_backend(root)
    backend.create_layout()
    (root / "index").rmdir()
    (root / "index").write_bytes(b"a file where the folder should be")
    name = "ab" * 32
    for call in (
        lambda: backend.read("index", name),
        lambda: backend.read_tail("index", name, 10),
        lambda: backend.stat("index", name),
        lambda: list(backend.list("index")),
    ):
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert caught.value.category is Category.UNAVAILABLE
        assert not caught.value.retryable
        assert str(root / "index") in str(caught.value)
