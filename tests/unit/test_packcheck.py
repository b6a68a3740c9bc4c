"""The data pass of `verify --read-data` names exactly the bundle members whose plaintext is not their id.

A writer's fault, not damage: the bundle authenticates and decompresses, but one member's keyed hash
differs from the id its header (and the index) give it. Only that member is bad; its neighbours in the
same bundle, hashed one after the other, are sound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from capsule.adapters.repository.blobcodec import encode_bundle
from capsule.adapters.repository.pack import BLOB_DATA, HEADER_ENTRY, PackBuilder
from capsule.adapters.repository.rebuild import rebuild_index
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.verify_packs import check_packs
from tests.unit.support import new_repository, reopen


def _bundle(repo: Repository, ids: list[bytes], pages: list[bytes]) -> tuple[bytes, bytes]:
    """(header entries, sealed bundle) of `pages` named `ids`."""
    compression, sealed = encode_bundle(repo.sealer, zstandard.ZstdCompressor(), BLOB_DATA, b"".join(pages))
    header = b"".join(
        HEADER_ENTRY.pack(BLOB_DATA, compression, len(sealed) if k == 0 else 0, len(page), blob_id)
        for k, (blob_id, page) in enumerate(zip(ids, pages, strict=True))
    )
    return header, sealed


@pytest.fixture
def misnamed(tmp_path: Path) -> tuple[Repository, Path, str, list[bytes], bytes]:
    """A pack of two bundles of pages; the second page of the first is named with another's id."""
    repo, key_file = new_repository(tmp_path)
    pages = [bytes([n]) * 4096 for n in range(7)]
    ids = [repo.sealer.blob_id(p) for p in pages]
    wrong = repo.sealer.blob_id(b"another page")
    builder = PackBuilder()
    builder.add_run(*_bundle(repo, [ids[0], wrong, *ids[2:4]], pages[:4]))
    builder.add_run(*_bundle(repo, ids[4:], pages[4:]))
    pack_id, data = builder.finish(repo.sealer)
    repo.backend.write("data", pack_id, data)
    return repo, key_file, pack_id, [ids[0], *ids[2:]], wrong


@pytest.mark.parametrize("indexed", [False, True], ids=["by-its-header", "by-the-index"])
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker-process"])
def test_only_the_misnamed_member_of_a_bundle_is_bad(
    misnamed: tuple[Repository, Path, str, list[bytes], bytes], indexed: bool, workers: int
) -> None:
    repo, key_file, pack_id, right, wrong = misnamed
    if indexed:
        rebuild_index(reopen(repo, key_file))
    fresh = reopen(repo, key_file)
    fresh.load_index(use_cache=False)

    [(name, check)] = list(check_packs(fresh, workers=workers))

    assert name == pack_id and check.name_matches and check.header_error is None
    assert check.bad == [wrong]
    assert check.blobs == len(right) + 1 and not check.disagree
