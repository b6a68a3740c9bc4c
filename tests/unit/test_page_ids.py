"""The native page hasher gives each page the keyed BLAKE3 id the `blake3` package gives it.

A database backup names every page by its id; the native hasher (adapters/repository/pageids.c)
hashes many pages together. One id that differed from `blake3`'s would make an unchanged page
look new (no deduplication), and a restore or `verify` refuse a page that is right.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.adapters.repository import crypto
from capsule.adapters.repository.crypto import NATIVE_PIECE_SIZES, MasterKey, Sealer
from tests.servers import in_ci

try:
    from capsule.adapters.repository._pageids import page_ids
except ImportError:  # judged by test_the_native_hasher_is_built
    page_ids = None

native = pytest.mark.skipif(page_ids is None, reason="the native page hasher is not built here")


def one_by_one(key: bytes, data: bytes, size: int) -> bytes:
    return b"".join(blake3.blake3(data[i : i + size], key=key).digest() for i in range(0, len(data), size))


def test_the_native_hasher_is_built() -> None:
    # The README's install builds it with the machine's C compiler; CI must run the fast path, not
    # the fallback, or its tests prove nothing about what a shop runs.
    if page_ids is None and not in_ci():
        pytest.skip("no C compiler at install time: pages are hashed one by one")
    assert page_ids is not None


@native
def test_blob_ids_use_the_native_hasher_where_it_is_faster() -> None:
    from capsule.adapters.repository import _pageids

    assert crypto._native_page_ids is (page_ids if _pageids.wide() else None)


@native
@pytest.mark.parametrize("size", sorted(NATIVE_PIECE_SIZES))
@pytest.mark.parametrize("pages", [1, 2, 15, 16, 17, 255, 256, 257, 300])
def test_every_page_size_and_count_gives_blake3_s_ids(size: int, pages: int) -> None:
    # Counts around the sixteen lanes and the 256-chunk batch, for every page size SQLite allows
    # from 1 KiB: partial lane groups, a batch boundary inside the data, one page alone.
    rng = random.Random(size * 1000 + pages)
    key = rng.randbytes(32)
    data = rng.randbytes(size * pages)
    assert page_ids(key, data, size) == one_by_one(key, data, size)


@native
@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    size=st.sampled_from(sorted(NATIVE_PIECE_SIZES)),
    pages=st.integers(min_value=0, max_value=40),
    tail=st.integers(min_value=0, max_value=70_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_blob_ids_of_any_data_match_the_ids_one_piece_at_a_time(
    key: bytes, size: int, pages: int, tail: int, seed: int
) -> None:
    # Sealer.blob_ids hands the whole pages to the native hasher and the short end to blake3.
    tail %= size
    data = random.Random(seed).randbytes(size * pages + tail)
    sealer = Sealer(MasterKey(os.urandom(32), key))
    assert sealer.blob_ids(data, size) == one_by_one(key, data, size)
    assert sealer.blob_ids(memoryview(bytearray(data)), size) == one_by_one(key, data, size)


@native
def test_a_changed_byte_anywhere_changes_that_page_s_id_alone() -> None:
    key = os.urandom(32)
    data = bytearray(random.Random(7).randbytes(4096 * 20))
    before = page_ids(key, bytes(data), 4096)
    for at in (0, 1023, 1024, 4095, 4096 * 7 + 2048, len(data) - 1):
        changed = bytearray(data)
        changed[at] ^= 0x01
        after = page_ids(key, bytes(changed), 4096)
        page = at // 4096
        differs = [i for i in range(20) if after[32 * i : 32 * i + 32] != before[32 * i : 32 * i + 32]]
        assert differs == [page]


@native
def test_the_end_shorter_than_a_page_is_left_to_the_caller() -> None:
    key = os.urandom(32)
    data = os.urandom(4096 * 3 + 100)
    assert page_ids(key, data, 4096) == one_by_one(key, data[: 4096 * 3], 4096)
    assert page_ids(key, data[:100], 4096) == b""


@native
@pytest.mark.parametrize("size", [0, 512, 1000, 3072, 4097, 131072, -4096])
def test_a_size_it_cannot_take_is_refused_with_what_it_takes(size: int) -> None:
    with pytest.raises(ValueError, match="power of two from 1024 to 65536"):
        page_ids(os.urandom(32), os.urandom(8192), size)


@native
def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        page_ids(os.urandom(16), os.urandom(8192), 4096)


@pytest.mark.parametrize("size", [512, 3000])
def test_other_piece_sizes_go_one_by_one_and_give_the_same_ids(size: int) -> None:
    key = os.urandom(32)
    data = os.urandom(size * 5 + 7)
    assert Sealer(MasterKey(os.urandom(32), key)).blob_ids(data, size) == one_by_one(key, data, size)


def test_without_the_native_hasher_blob_ids_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine with no C compiler at install time hashes page by page: same ids, slower.
    key = os.urandom(32)
    data = os.urandom(4096 * 33 + 5)
    sealer = Sealer(MasterKey(os.urandom(32), key))
    monkeypatch.setattr(crypto, "_native_page_ids", None)
    assert sealer.blob_ids(data, 4096) == one_by_one(key, data, 4096)


@native
def test_wide_matches_what_the_processor_says_it_has() -> None:
    # The native hasher is used only on AVX2 or AVX-512; a processor that has them must get it.
    from capsule.adapters.repository import _pageids

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists():
        assert _pageids.wide() is False
        return
    flags = set(cpuinfo.read_text().split())
    assert _pageids.wide() is bool({"avx2", "avx512f"} & flags)


def test_the_version_line_says_whether_pages_are_hashed_natively() -> None:
    assert crypto.page_hasher().startswith("native") is (crypto._native_page_ids is not None)
    if page_ids is None:
        assert "not built" in crypto.page_hasher()
