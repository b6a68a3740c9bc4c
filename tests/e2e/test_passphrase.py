"""A passphrase opens the repository when the key file is lost, and is never written anywhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.helpers import Shop, file_content_digest, one_line_error, sha256_file

PASSPHRASE = "Quartz-Harbor 7781 pickled-onion receipts"


def secret_forms() -> list[bytes]:
    return [PASSPHRASE.encode(), PASSPHRASE.encode("utf-16-le"), PASSPHRASE.split(maxsplit=1)[0].encode()]


def assert_no_secret(where: str, data: bytes) -> None:
    for form in secret_forms():
        assert form not in data, f"the passphrase appears in {where}"


def assert_no_secret_in_output(proc: subprocess.CompletedProcess[str]) -> None:
    assert_no_secret("stdout", proc.stdout.encode())
    assert_no_secret("stderr", proc.stderr.encode())


def test_passphrase_restores_without_the_key_file_and_is_never_stored_or_printed(
    bare_shop: Shop, tmp_path: Path
) -> None:
    shop = bare_shop
    phrase_file = tmp_path / "passphrase.txt"
    phrase_file.write_text(PASSPHRASE + "\n")
    outputs = [shop.run("--log-level", "debug", "init", "--passphrase-file", str(phrase_file), expect=0)]
    outputs.append(shop.run("--log-level", "debug", "backup", "--json", expect=0))
    shop.key_file.unlink()

    with_phrase = {"CAPSULE_PASSPHRASE": PASSPHRASE}
    target = tmp_path / "restored"
    restored = shop.run(
        "--log-level", "debug", "restore", "latest", "--to", str(target), env=with_phrase, expect=0
    )
    outputs.append(restored)
    sid = shop.snapshots(env=with_phrase)[0]["snapshot_id"]
    assert f"SHA-256 {sha256_file(target / 'pos.db')[:16]}" in restored.stdout
    assert file_content_digest(target / "pos.db", immutable=True) == file_content_digest(shop.database)
    outputs.append(shop.run("--log-level", "debug", "verify", "--read-data", env=with_phrase, expect=0))

    wrong_phrase = {"CAPSULE_PASSPHRASE": PASSPHRASE.upper()}
    wrong = shop.run("--log-level", "debug", "restore", sid, "--to", str(tmp_path / "no"), env=wrong_phrase)
    outputs.append(wrong)
    assert wrong.returncode == 1
    assert "passphrase" in one_line_error(wrong)
    assert not (tmp_path / "no").exists()

    no_key = shop.run("snapshots", expect=1)
    assert "CAPSULE_PASSPHRASE" in one_line_error(no_key)

    for proc in outputs:
        assert_no_secret_in_output(proc)
    stored = [p for p in [*shop.repository.rglob("*"), *shop.home.rglob("*")] if p.is_file()]
    assert any(p.parent.name == "keys" for p in stored)
    for path in stored:
        assert_no_secret(str(path), path.read_bytes())
