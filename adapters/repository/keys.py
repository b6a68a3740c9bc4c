"""Key entries: the master key wrapped by a key file's secret or by a passphrase (scrypt).

The key file lives outside the repository (by default in CAPSULE_HOME); the repository holds only
wrapped copies of the master key under `keys/`, so the repository alone opens nothing.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from capsule.adapters.errors import IntegrityError, ObjectNotFound, WrongKey
from capsule.adapters.logs import get_logger
from capsule.adapters.repository import crypto
from capsule.adapters.repository.backends.local import atomic_write
from capsule.adapters.repository.backends.storage import Backend
from capsule.adapters.repository.crypto import MasterKey

log = get_logger(__name__)

KeyType = Literal["key-file", "passphrase", "damaged"]


def _key_aad(repository_id: str, key_id: str) -> bytes:
    return f"capsule:key:{repository_id}:{key_id}".encode()


def add_key_file(backend: Backend, master: MasterKey, repo_id: str, key_file: Path) -> str:
    """Wrap the master key with a new random secret kept in `key_file` (outside the repository)."""
    key_id, secret = add_key_file_entry(backend, master, repo_id)
    write_key_file(key_file, KeyFile(secret, key_id, repo_id))
    return key_id


def add_key_file_entry(backend: Backend, master: MasterKey, repo_id: str) -> tuple[str, bytes]:
    """A new key-file entry under `keys/`: its id and the secret that unwraps it."""
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
    return key_id, secret


@dataclass(frozen=True)
class KeyFile:
    """What a key file holds. A key file typed back from paper before its repository could be
    reached knows only the repository id's first 8 hex digits and not its entry's id; the first
    open that succeeds writes them in."""

    secret: bytes
    key_id: str | None
    repository_id: str | None
    repository_prefix: str | None = None

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"KeyFile(key_id={self.key_id!r}, repository_id={self.repository_id!r}, secret=<secret>)"

    @property
    def prefix(self) -> str:
        """The first 8 hex digits of the repository id it opens."""
        return (self.repository_id or self.repository_prefix or "")[:8]


def write_key_file(path: Path, key: KeyFile) -> None:
    body: dict[str, object] = {"capsule_key_file": 1}
    if key.repository_id is not None:
        body["repository_id"] = key.repository_id
    else:
        body["repository_id_prefix"] = key.repository_prefix
    if key.key_id is not None:
        body["key_id"] = key.key_id
    body["secret"] = crypto.b64(key.secret)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(body, indent=2).encode() + b"\n", 0o600)


def read_key_file(path: Path) -> KeyFile:
    try:
        body = json.loads(path.read_text())
        secret = crypto.unb64(body["secret"])
        key_id, repo_id = body.get("key_id"), body.get("repository_id")
        prefix = body.get("repository_id_prefix")
        if len(secret) != crypto.KEY_SIZE or not all(
            v is None or isinstance(v, str) for v in (key_id, repo_id, prefix)
        ):
            raise ValueError("wrong types")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WrongKey(f"the key file {path} is not a Capsule key file") from e
    if repo_id is None and not prefix:
        raise WrongKey(f"the key file {path} does not say which repository it opens")
    return KeyFile(secret, key_id, repo_id, prefix)


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
    body = read_key_file(key_file)
    if body.repository_id != repo_id and not (body.repository_id is None and repo_id.startswith(body.prefix)):
        raise WrongKey(
            f"the key file {key_file} belongs to another repository (id {body.prefix}..., this one "
            f"is {repo_id[:8]}...); use the key file made when this repository was created"
        )
    if body.key_id is None:
        try:
            key_id, master = key_file_entry(backend, repo_id, body.secret)
        except WrongKey as e:
            raise WrongKey(
                f"the repository no longer accepts the key in {key_file} (no key-file entry opens "
                "with it; it may have been removed with `capsule key remove`)"
            ) from e
        write_key_file(key_file, KeyFile(body.secret, key_id, repo_id))
        log.info("key file completed at its first open", key_id=key_id[:12])
        return master
    key_id, secret = body.key_id, body.secret
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


def key_file_entry(backend: Backend, repo_id: str, secret: bytes) -> tuple[str, MasterKey]:
    """The key-file entry `secret` unwraps, and the master key; `WrongKey` if none does."""
    for entry in list_entries(backend):
        if entry.type != "key-file":
            continue
        try:
            wrapped = crypto.unb64(json.loads(backend.read("keys", entry.key_id))["wrapped"])
            return entry.key_id, crypto.unwrap_key(wrapped, secret, _key_aad(repo_id, entry.key_id))
        except (WrongKey, ValueError, KeyError, TypeError, ObjectNotFound):
            continue
    raise WrongKey("no key-file entry of the repository opens with this key")


@dataclass(frozen=True)
class KeyEntry:
    """One way in, as `keys/<key_id>` describes it (its wrapped key aside)."""

    key_id: str
    type: KeyType
    """`key-file`, `passphrase`, or `damaged` for an entry that cannot be read."""
    created: datetime | None
    hostname: str


def list_entries(backend: Backend) -> list[KeyEntry]:
    """Every key entry, oldest first (then by id)."""
    entries = []
    for key_id in backend.list("keys"):
        try:
            body = json.loads(backend.read("keys", key_id))
            kind: KeyType = "key-file" if body.get("type") == "key-file" else "passphrase"
            if body.get("type") not in ("key-file", "passphrase"):
                kind = "damaged"
            created: datetime | None = datetime.fromisoformat(str(body["created"]))
            hostname = str(body.get("hostname", ""))
        except (ValueError, KeyError, TypeError, AttributeError, ObjectNotFound):
            kind, created, hostname = "damaged", None, ""
        entries.append(KeyEntry(key_id, kind, created, hostname))
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(entries, key=lambda e: ((e.created or oldest).astimezone(UTC), e.key_id))


def remove_entry(backend: Backend, key_id: str) -> None:
    backend.remove("keys", key_id)


def open_with_passphrase(backend: Backend, repo_id: str, phrase: str) -> MasterKey:
    return passphrase_entry(backend, repo_id, phrase)[1]


def passphrase_entry(backend: Backend, repo_id: str, phrase: str) -> tuple[str, MasterKey]:
    """The passphrase entry `phrase` opens, and the master key; `WrongKey` if none does."""
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
            master = crypto.unwrap_key(crypto.unb64(entry["wrapped"]), kek, _key_aad(repo_id, key_id))
        except WrongKey:
            continue
        return key_id, master
    raise WrongKey("the passphrase does not open this repository")
