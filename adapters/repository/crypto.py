"""Keys, ids and sealing: the repository's cryptography in one place.

Blob ids are BLAKE3 keyed hashes of the plaintext (the key never leaves the master key, so ids reveal
nothing about content to someone without it). Everything stored is sealed with AES-256-GCM under a
random 96-bit nonce; the associated data binds each ciphertext to what it claims to be, so a blob
cannot be passed off as another blob, nor an index as a snapshot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from capsule.adapters.errors import IntegrityError, WrongKey

_native_page_ids: Callable[[bytes, bytes | bytearray | memoryview, int], bytes] | None = None
_PAGE_HASHER = "one call per page (the native hasher was not built: no C compiler at install)"
try:  # built where a C compiler was found at install time (setup.py); else page by page below
    from capsule.adapters.repository import _pageids
except ImportError:  # pragma: no cover - depends on the build
    pass
else:
    # Only where it beats a call per page: on 256-bit vectors or wider (see pageids.c).
    if _pageids.wide():
        _native_page_ids = _pageids.page_ids
        _PAGE_HASHER = "native, many pages at a time"
    else:
        _PAGE_HASHER = "one call per page (this processor has no AVX2 or AVX-512 for the native hasher)"

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
KEY_SIZE = 32
ID_SIZE = 32


def page_hasher() -> str:
    """How this install hashes a database's pages, for `capsule --version`."""
    return _PAGE_HASHER


def native_page_ids() -> bool:
    """Whether a database's pages are hashed natively, many at a time, without the interpreter's
    lock (see pageids.c); else one `blake3` call a page, which holds it."""
    return _native_page_ids is not None


# The piece sizes the native hasher takes: a power of two from one BLAKE3 chunk (1 KiB) to 64 KiB.
NATIVE_PIECE_SIZES = frozenset(1024 << k for k in range(7))

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True)
class MasterKey:
    """The repository's secret: one key to encrypt, one to derive blob ids and MACs."""

    encryption: bytes
    identity: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    def to_bytes(self) -> bytes:
        return self.encryption + self.identity

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        if len(raw) != 2 * KEY_SIZE:
            raise WrongKey("the key material has the wrong length; the key file is damaged")
        return cls(raw[:KEY_SIZE], raw[KEY_SIZE:])

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return "MasterKey(<secret>)"


class Sealer:
    """Seals and opens bytes under the master key, and computes keyed ids."""

    def __init__(self, key: MasterKey) -> None:
        self._aead = AESGCM(key.encryption)
        self._id_key = key.identity

    def blob_id(self, data: bytes | memoryview) -> bytes:
        digest: bytes = blake3.blake3(data, key=self._id_key).digest()
        return digest

    def id_hasher(self) -> blake3.blake3:
        """A keyed hasher for ids, to be `reset()` between blobs: a new one keyed for each costs
        more than hashing a database page (see docs/performance.md, "verify --read-data: one
        hasher, one buffer, lists looked up together"). Not to be shared between threads."""
        return blake3.blake3(key=self._id_key)

    def blob_ids(self, data: bytes | memoryview, size: int) -> bytes:
        """The ids of the consecutive `size`-byte pieces of `data` (the last may be shorter), end
        to end. For a database's pages (a power of two from 1 KiB to 64 KiB) the native hasher
        takes the whole pieces together; the rest go through one keyed hasher, reset between
        pieces, instead of a new one keyed for each."""
        view = memoryview(data)
        out = bytearray()
        rest = 0
        if _native_page_ids is not None and size in NATIVE_PIECE_SIZES and len(view) >= size:
            out += _native_page_ids(self._id_key, view, size)
            rest = len(view) - len(view) % size
        hasher = blake3.blake3(key=self._id_key)
        for start in range(rest, len(view), size):
            hasher.update(view[start : start + size])
            out += hasher.digest()
            hasher.reset()
        return bytes(out)

    def mac(self, data: bytes) -> bytes:
        return hmac.new(self._id_key, data, hashlib.sha256).digest()

    def seal(self, plaintext: bytes | memoryview, aad: bytes, nonce: bytes | None = None) -> bytes:
        """Encrypt under a random nonce; a caller may pass one it drew from os.urandom itself."""
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError("a nonce must be 12 random bytes")
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str | Callable[[], str]) -> bytes:
        """Decrypt and authenticate; `what` names the object in errors (a callable is only called then)."""
        if len(sealed) < OVERHEAD:
            raise IntegrityError(f"{_name(what)} is truncated")
        sealed = memoryview(sealed)
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag as e:
            raise IntegrityError(f"{_name(what)} failed authentication: it was damaged or altered") from e


def _name(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def wrap_key(master: MasterKey, wrapping_key: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(wrapping_key).encrypt(nonce, master.to_bytes(), aad)


def unwrap_key(wrapped: bytes, wrapping_key: bytes, aad: bytes) -> MasterKey:
    try:
        raw = AESGCM(wrapping_key).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad)
    except InvalidTag as e:
        raise WrongKey("this key does not open the repository") from e
    return MasterKey.from_bytes(raw)


def passphrase_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    kdf = Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p)
    return kdf.derive(passphrase.encode("utf-8"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
