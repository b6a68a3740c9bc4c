"""Opening a repository: the right key file or passphrase opens it, anything else is refused clearly."""

from __future__ import annotations

import base64
import json
import os

import pytest

from capsule.adapters.errors import (
    IntegrityError,
    KeyFileMissing,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
    WrongKey,
)
from capsule.adapters.repository import crypto
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.crypto import MasterKey
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.repo import Repository, add_passphrase_key
from capsule.domain.errors import CapsuleError
from tests.unit.support import new_repository


@pytest.fixture
def fast_scrypt(monkeypatch):
    """Cheaper scrypt for new passphrase keys; opening reads the cost from the key entry."""
    monkeypatch.setattr(crypto, "SCRYPT_N", 2**10)


def _store(repo: Repository, data: bytes) -> bytes:
    blob = repo.prepare(BLOB_DATA, data)
    repo.add(blob)
    repo.flush()
    return blob.blob_id


def _master(repo: Repository, key_file) -> MasterKey:
    body = json.loads(key_file.read_text())
    entry = json.loads(repo.backend.read("keys", body["key_id"]))
    return crypto.unwrap_key(
        crypto.unb64(entry["wrapped"]),
        crypto.unb64(body["secret"]),
        f"capsule:key:{repo.id}:{body['key_id']}".encode(),
    )


def _rewrite_config(repo: Repository, **changes) -> None:
    path = repo.backend.root / "config"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2))


def test_repository_opens_with_its_own_key_file(tmp_path):
    repo, key_file = new_repository(tmp_path)
    blob_id = _store(repo, b"opening sale")
    opened = Repository.open(LocalBackend(repo.backend.root), key_file)
    opened.load_index()
    assert opened.id == repo.id
    assert opened.read_blob(blob_id) == b"opening sale"


def test_key_file_of_another_repository_is_refused_with_a_clear_message(tmp_path):
    repo, _ = new_repository(tmp_path / "shop")
    _, other_key = new_repository(tmp_path / "other-shop")
    with pytest.raises(WrongKey, match="belongs to another repository") as info:
        Repository.open(LocalBackend(repo.backend.root), other_key)
    assert str(other_key) in str(info.value)


def test_key_file_with_a_wrong_secret_is_refused(tmp_path):
    repo, key_file = new_repository(tmp_path)
    body = json.loads(key_file.read_text())
    body["secret"] = base64.b64encode(os.urandom(32)).decode()
    key_file.write_text(json.dumps(body))
    with pytest.raises(WrongKey, match="does not open this repository") as refused:
        Repository.open(LocalBackend(repo.backend.root), key_file)
    assert str(key_file) in str(refused.value)
    assert body["secret"] not in str(refused.value)


def test_file_that_is_not_a_key_file_is_refused(tmp_path):
    repo, key_file = new_repository(tmp_path)
    key_file.write_text("this is a shopping list\n")
    with pytest.raises(WrongKey, match="not a Capsule key file"):
        Repository.open(LocalBackend(repo.backend.root), key_file)


def test_key_file_whose_entry_was_removed_from_the_repository_is_refused(tmp_path):
    repo, key_file = new_repository(tmp_path)
    repo.backend.remove("keys", json.loads(key_file.read_text())["key_id"])
    with pytest.raises(WrongKey, match="no longer accepts"):
        Repository.open(LocalBackend(repo.backend.root), key_file)


def test_passphrase_opens_the_repository_without_the_key_file(tmp_path, fast_scrypt):
    repo, key_file = new_repository(tmp_path, passphrase="correct horse battery staple")
    blob_id = _store(repo, b"recoverable")
    key_file.unlink()
    opened = Repository.open(LocalBackend(repo.backend.root), key_file, "correct horse battery staple")
    opened.load_index()
    assert opened.read_blob(blob_id) == b"recoverable"
    opened_without_path = Repository.open(
        LocalBackend(repo.backend.root), None, "correct horse battery staple"
    )
    assert opened_without_path.id == repo.id


def test_wrong_passphrase_is_refused(tmp_path, fast_scrypt):
    repo, _ = new_repository(tmp_path, passphrase="correct horse battery staple")
    with pytest.raises(WrongKey, match="passphrase does not open"):
        Repository.open(LocalBackend(repo.backend.root), None, "Correct horse battery staple")


def test_passphrase_of_a_repository_without_one_is_refused(tmp_path):
    repo, key_file = new_repository(tmp_path)
    key_file.unlink()
    with pytest.raises(WrongKey):
        Repository.open(LocalBackend(repo.backend.root), key_file, "anything")


def test_passphrase_entry_uses_scrypt_with_the_default_cost(tmp_path):
    repo, key_file = new_repository(tmp_path, passphrase="slow to guess")
    key_id = json.loads(key_file.read_text())["key_id"]
    (entry_name,) = (n for n in repo.backend.list("keys") if n != key_id)
    kdf = json.loads(repo.backend.read("keys", entry_name))["kdf"]
    assert kdf["name"] == "scrypt"
    assert kdf["n"] >= 2**15
    assert len(base64.b64decode(kdf["salt"])) >= 16
    assert b"slow to guess" not in repo.backend.read("keys", entry_name)
    key_file.unlink()
    assert Repository.open(LocalBackend(repo.backend.root), None, "slow to guess").id == repo.id


def test_missing_key_file_without_passphrase_raises_key_file_missing(tmp_path):
    repo, key_file = new_repository(tmp_path)
    key_file.unlink()
    with pytest.raises(KeyFileMissing) as info:
        Repository.open(LocalBackend(repo.backend.root), key_file)
    assert str(key_file) in str(info.value)
    assert "CAPSULE_PASSPHRASE" in str(info.value)


def test_no_key_at_all_is_refused(tmp_path):
    repo, _ = new_repository(tmp_path)
    with pytest.raises(WrongKey, match="no key"):
        Repository.open(LocalBackend(repo.backend.root), None)


def test_config_of_a_newer_format_version_is_refused(tmp_path):
    repo, key_file = new_repository(tmp_path)
    _rewrite_config(repo, version=3)
    with pytest.raises(UnsupportedVersion, match="version 3") as info:
        Repository.open(LocalBackend(repo.backend.root), key_file)
    assert "upgrade Capsule" in str(info.value)


def test_folder_that_is_not_a_capsule_repository_is_refused(tmp_path):
    repo, key_file = new_repository(tmp_path)
    _rewrite_config(repo, format="restic")
    with pytest.raises(UnsupportedVersion):
        Repository.open(LocalBackend(repo.backend.root), key_file)


def test_missing_repository_is_reported(tmp_path):
    with pytest.raises(RepositoryNotFound, match="capsule init"):
        Repository.open(LocalBackend(tmp_path / "nowhere"), tmp_path / "key")


def test_config_that_is_not_json_is_an_integrity_error(tmp_path):
    repo, key_file = new_repository(tmp_path)
    (repo.backend.root / "config").write_text("{ half a config")
    with pytest.raises(IntegrityError):
        Repository.open(LocalBackend(repo.backend.root), key_file)


@pytest.mark.parametrize(
    "changes",
    [
        {"pack_size": 1024},
        {"pack_size": 64 * 1024 * 1024},
        {"compression_level": 19},
        {"created": "2000-01-01T00:00:00+00:00"},
        {"extra": "field"},
        {"mac": "00" * 32},
        {"mac": ""},
    ],
    ids=lambda c: "-".join(f"{k}" for k in c),
)
def test_tampered_config_fails_authentication(tmp_path, changes):
    repo, key_file = new_repository(tmp_path)
    _rewrite_config(repo, **changes)
    with pytest.raises(IntegrityError, match="config"):
        Repository.open(LocalBackend(repo.backend.root), key_file)


def test_config_without_a_mac_fails_authentication(tmp_path):
    repo, key_file = new_repository(tmp_path)
    path = repo.backend.root / "config"
    config = json.loads(path.read_text())
    del config["mac"]
    path.write_text(json.dumps(config))
    with pytest.raises(IntegrityError):
        Repository.open(LocalBackend(repo.backend.root), key_file)


def test_config_reformatted_without_changes_still_opens(tmp_path):
    repo, key_file = new_repository(tmp_path)
    path = repo.backend.root / "config"
    path.write_text(json.dumps(json.loads(path.read_text()), sort_keys=True))
    assert Repository.open(LocalBackend(repo.backend.root), key_file).pack_size == repo.pack_size


def test_config_whose_mac_is_not_hex_fails_authentication(tmp_path):
    repo, key_file = new_repository(tmp_path)
    config = json.loads((repo.backend.root / "config").read_text())
    _rewrite_config(repo, mac="zz" + config["mac"][2:])
    with pytest.raises(IntegrityError):
        Repository.open(LocalBackend(repo.backend.root), key_file)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-5],
        lambda raw: b"[]",
        lambda raw: raw.replace(b'"wrapped"', b'"unwrapped"'),
        lambda raw: raw.replace(b'"wrapped": "', b'"wrapped": "!!'),
    ],
    ids=["truncated", "not-an-object", "no-wrapped-key", "not-base64"],
)
def test_damaged_key_entry_is_reported_in_one_sentence(tmp_path, damage):
    repo, key_file = new_repository(tmp_path)
    key_id = json.loads(key_file.read_text())["key_id"]
    entry = repo.backend.path_of("keys", key_id)
    entry.write_bytes(damage(entry.read_bytes()))
    with pytest.raises(CapsuleError, match="damaged"):
        Repository.open(LocalBackend(repo.backend.root), key_file)


def test_damaged_passphrase_entry_is_skipped_for_a_good_one(tmp_path, fast_scrypt):
    repo, key_file = new_repository(tmp_path, passphrase="first phrase")
    second = add_passphrase_key(repo.backend, _master(repo, key_file), repo.id, "second phrase")
    key_id = json.loads(key_file.read_text())["key_id"]
    (first,) = set(repo.backend.list("keys")) - {key_id, second}
    repo.backend.write("keys", first, b"{ damaged")
    key_file.unlink()

    assert Repository.open(LocalBackend(repo.backend.root), None, "second phrase").id == repo.id
    with pytest.raises(WrongKey):
        Repository.open(LocalBackend(repo.backend.root), None, "first phrase")


def test_key_file_of_another_repository_does_not_hide_a_correct_passphrase(tmp_path, fast_scrypt):
    repo, _ = new_repository(tmp_path / "shop", passphrase="shop phrase")
    _, other_key = new_repository(tmp_path / "other-shop")
    opened = Repository.open(LocalBackend(repo.backend.root), other_key, "shop phrase")
    assert opened.id == repo.id


def test_master_key_repr_shows_no_secret():
    key = MasterKey.generate()
    for text in (repr(key), str(key), f"{key!r}", repr([key])):
        for secret in (key.encryption, key.identity):
            assert secret.hex() not in text
            assert repr(secret) not in text
            assert base64.b64encode(secret).decode() not in text
    assert "secret" in repr(key)


def test_master_key_survives_serialisation_and_refuses_a_wrong_length():
    key = MasterKey.generate()
    assert MasterKey.from_bytes(key.to_bytes()) == key
    with pytest.raises(WrongKey):
        MasterKey.from_bytes(key.to_bytes()[:-1])


def test_two_generated_master_keys_differ():
    assert MasterKey.generate().to_bytes() != MasterKey.generate().to_bytes()


def test_init_refuses_to_overwrite_a_repository_or_a_key_file(tmp_path):
    repo, key_file = new_repository(tmp_path)
    with pytest.raises(RepositoryExists):
        Repository.init(LocalBackend(repo.backend.root), tmp_path / "new.key")
    with pytest.raises(RepositoryExists, match="key file already exists"):
        Repository.init(LocalBackend(tmp_path / "second"), key_file)


def test_key_file_is_private_to_its_owner(tmp_path):
    _, key_file = new_repository(tmp_path)
    assert key_file.stat().st_mode & 0o077 == 0


def test_snapshot_of_a_newer_manifest_version_is_refused(tmp_path):
    repo, _ = new_repository(tmp_path)
    newer = b'{"version": 4, "kind": "database", "entries": [], "something": "new"}'
    name = repo.save_sealed("snapshots", newer)
    with pytest.raises(
        UnsupportedVersion, match="manifest version 4; this Capsule reads version 3 and older"
    ):
        repo.load_snapshot(name)
