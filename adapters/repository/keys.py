"""Key entries: the master key wrapped by a key file's secret or by a passphrase (scrypt).

The key file lives outside the repository (by default in CAPSULE_HOME); the repository holds only
wrapped copies of the master key under `keys/`, so the repository alone opens nothing.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from capsule.adapters.errors import IntegrityError, ObjectNotFound, WrongKey
from capsule.adapters.logs import get_logger
from capsule.adapters.repository import crypto
from capsule.adapters.repository.backends.local import atomic_write
from capsule.adapters.repository.backends.storage import Backend
from capsule.adapters.repository.crypto import MasterKey

log = get_logger(__name__)


def _key_aad(repository_id: str, key_id: str) -> bytes:
    return f"capsule:key:{repository_id}:{key_id}".encode()


def add_key_file(backend: Backend, master: MasterKey, repo_id: str, key_file: Path) -> str:
    """Wrap the master key with a new random secret kept in `key_file` (outside the repository)."""
    key_id = os.urandom(16).hex()
    secret = os.urandom(crypto.KEY_SIZE)
    entry = {
        "version": 1,
        "type": "key-file",
        "created": datetime.now(UTC).isoformat(),
        "hostname": socket.gethostname(),
        "wrapped": crypto.b64(crypto.wrap_key(master, secret, _key_aad(repo_id, key_id))),
    }
    backend.write("keys", key_id, json.dumps(entry, indent=2).encode())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "capsule_key_file": 1,
        "repository_id": repo_id,
        "key_id": key_id,
        "secret": crypto.b64(secret),
    }
    atomic_write(key_file, json.dumps(body, indent=2).encode() + b"\n", 0o600)
    return key_id


def add_passphrase_key(backend: Backend, master: MasterKey, repo_id: str, phrase: str) -> str:
    key_id = os.urandom(16).hex()
    salt = os.urandom(16)
    kek = crypto.passphrase_key(phrase, salt, crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P)
    entry = {
        "version": 1,
        "type": "passphrase",
        "created": datetime.now(UTC).isoformat(),
        "hostname": socket.gethostname(),
        "kdf": {
            "name": "scrypt",
            "n": crypto.SCRYPT_N,
            "r": crypto.SCRYPT_R,
            "p": crypto.SCRYPT_P,
            "salt": crypto.b64(salt),
        },
        "wrapped": crypto.b64(crypto.wrap_key(master, kek, _key_aad(repo_id, key_id))),
    }
    backend.write("keys", key_id, json.dumps(entry, indent=2).encode())
    return key_id


def open_with_key_file(backend: Backend, repo_id: str, key_file: Path) -> MasterKey:
    try:
        body = json.loads(key_file.read_text())
        key_id, secret = body["key_id"], crypto.unb64(body["secret"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WrongKey(f"the key file {key_file} is not a Capsule key file") from e
    if body.get("repository_id") != repo_id:
        raise WrongKey(
            f"the key file {key_file} belongs to another repository; use the key file made when "
            "this repository was created"
        )
    try:
        entry = json.loads(backend.read("keys", key_id))
        wrapped = crypto.unb64(entry["wrapped"])
    except ObjectNotFound as e:
        raise WrongKey(f"the repository no longer accepts the key in {key_file}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"the repository's key entry {key_id[:12]} is damaged") from e
    try:
        return crypto.unwrap_key(wrapped, secret, _key_aad(repo_id, key_id))
    except WrongKey as e:
        raise WrongKey(
            f"the key file {key_file} does not open this repository (its secret was changed or "
            "damaged); use the key file made when this repository was created, or give the "
            "repository's passphrase (CAPSULE_PASSPHRASE)"
        ) from e


def open_with_passphrase(backend: Backend, repo_id: str, phrase: str) -> MasterKey | None:
    for key_id in sorted(backend.list("keys")):
        try:
            entry = json.loads(backend.read("keys", key_id))
            if entry.get("type") != "passphrase":
                continue
            kdf = entry["kdf"]
            n, r, p, salt = int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), crypto.unb64(kdf["salt"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("skipped a damaged key entry", key_id=key_id[:12])
            continue
        if not (2**10 <= n <= 2**22 and 1 <= r <= 32 and 1 <= p <= 16):
            log.warning("skipped a key entry with unreasonable scrypt parameters", key_id=key_id[:12])
            continue
        kek = crypto.passphrase_key(phrase, salt, n, r, p)
        try:
            return crypto.unwrap_key(crypto.unb64(entry["wrapped"]), kek, _key_aad(repo_id, key_id))
        except WrongKey:
            continue
    raise WrongKey("the passphrase does not open this repository")
