"""Turning a blob's plaintext into its stored form and back: compress (when it pays), then seal.

Shared by the repository and the sealing worker processes, so that both write and read exactly the
format `docs/repository-format.md` describes.
"""

from __future__ import annotations

from collections.abc import Callable

import zstandard

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.crypto import Sealer
from capsule.adapters.repository.pack import (
    BUNDLE_NONE,
    BUNDLE_ZSTD,
    BUNDLED,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    blob_aad,
    bundle_aad,
)

# Compression must save at least this share of the bytes to be worth the work of undoing it.
MIN_COMPRESSION_GAIN = 0.03


def encode_blob(
    sealer: Sealer,
    compressor: zstandard.ZstdCompressor | None,
    blob_type: int,
    blob_id: bytes,
    data: bytes | memoryview,
    *,
    nonce: bytes | None = None,
) -> tuple[int, bytes]:
    """(compression, sealed bytes) for one blob; `compressor` None stores it as it is."""
    payload = _compressed(compressor, data)
    compression = COMPRESSION_NONE if payload is None else COMPRESSION_ZSTD
    return compression, sealer.seal(
        data if payload is None else payload, blob_aad(blob_type, compression, blob_id), nonce
    )


def _compressed(compressor: zstandard.ZstdCompressor | None, data: bytes | memoryview) -> bytes | None:
    """`data` compressed, or None when there is no compressor or compression does not pay."""
    if compressor is None or not len(data):
        return None
    packed = compressor.compress(data)
    return packed if len(packed) <= len(data) * (1 - MIN_COMPRESSION_GAIN) else None


def decode_blob(
    sealer: Sealer,
    decompressor: zstandard.ZstdDecompressor,
    blob_id: bytes,
    *,
    blob_type: int,
    compression: int,
    sealed: bytes | memoryview,
    plain_length: int,
    what: Callable[[], str],
) -> bytes:
    """The plaintext of a stored blob, authenticated; IntegrityError if anything is off.

    `what` names the blob in errors; it is called only then (a restore opens millions of blobs).
    """
    payload = sealer.open(sealed, blob_aad(blob_type, compression, blob_id), what)
    if compression == COMPRESSION_ZSTD:
        try:
            data: bytes = decompressor.decompress(payload, max_output_size=plain_length or 1)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{what()} does not decompress") from e
    elif compression == COMPRESSION_NONE:
        data = payload
    else:
        raise IntegrityError(f"{what()} uses an unknown compression")
    if len(data) != plain_length:
        raise IntegrityError(f"{what()} does not match its length")
    return data


def encode_bundle(
    sealer: Sealer,
    compressor: zstandard.ZstdCompressor | None,
    blob_type: int,
    data: bytes | memoryview,
    *,
    nonce: bytes | None = None,
) -> tuple[int, bytes]:
    """(compression, sealed bytes) for a bundle: its members' plaintexts end to end in `data`."""
    payload = _compressed(compressor, data)
    compression = BUNDLE_NONE if payload is None else BUNDLE_ZSTD
    return compression, sealer.seal(
        data if payload is None else payload, bundle_aad(blob_type, compression), nonce
    )


def decode_bundle(
    sealer: Sealer,
    decompressor: zstandard.ZstdDecompressor,
    *,
    blob_type: int,
    compression: int,
    sealed: bytes | memoryview,
    what: Callable[[], str],
) -> bytes:
    """The whole plaintext of a bundle, authenticated; its members are slices of it."""
    if compression not in BUNDLED:
        raise IntegrityError(f"{what()} is not in a bundle")
    payload = sealer.open(sealed, bundle_aad(blob_type, compression), what)
    if compression == BUNDLE_NONE:
        return payload
    try:
        # The frame states its size: the writer always records it. Bundles are small (see pack.py).
        data: bytes = decompressor.decompress(payload)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what()} does not decompress") from e
    return data


def member(bundle: bytes | memoryview, within: int, plain_length: int, what: Callable[[], str]) -> bytes:
    """A member's plaintext from its bundle's, or IntegrityError if the bundle is too short."""
    if within + plain_length > len(bundle):
        raise IntegrityError(f"{what()} lies beyond the end of its bundle")
    return bytes(bundle[within : within + plain_length])
