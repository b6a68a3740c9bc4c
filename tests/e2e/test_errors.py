"""Mistakes a shop owner can make get one clear sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.helpers import Shop, files_under, one_line_error, sha256_file, side_files


def test_backup_of_a_missing_database_fails_and_creates_no_file_there(shop: Shop) -> None:
    absent = shop.database.with_name("absent.db")
    in_missing_folder = shop.root / "no-such-folder" / "pos.db"

    for path in (absent, in_missing_folder):
        proc = shop.run("backup", env={"CAPSULE_DATABASE": str(path)}, expect=1)
        message = one_line_error(proc)
        assert str(path) in message and "CAPSULE_DATABASE" in message
        assert not path.exists() and side_files(path) == []
    assert not in_missing_folder.parent.exists()
    assert shop.snapshots() == []
    assert files_under(shop.staging) == []
    assert shop.leftover_copies() == []


def test_backup_of_a_file_that_is_not_a_database_fails_and_leaves_it_untouched(shop: Shop) -> None:
    notes = shop.database.with_name("notes.txt")
    notes.write_text("remember to order receipt paper\n" * 200)
    before = sha256_file(notes)

    proc = shop.run("backup", env={"CAPSULE_DATABASE": str(notes)}, expect=1)

    assert "SQLite database" in one_line_error(proc)
    assert sha256_file(notes) == before and side_files(notes) == []
    assert shop.snapshots() == []


def test_key_file_of_another_repository_is_refused(shop: Shop, tmp_path: Path) -> None:
    shop.backup()
    other = Shop(tmp_path / "other-shop")
    other.init()

    for args in (["snapshots"], ["backup"], ["restore", "latest", "--to", str(tmp_path / "out")]):
        proc = shop.run(*args, env={"CAPSULE_KEY_FILE": str(other.key_file)}, expect=1)
        message = one_line_error(proc)
        assert str(other.key_file) in message and "another repository" in message
    assert not (tmp_path / "out").exists()
    assert len(shop.snapshots()) == 1


def test_missing_key_file_is_reported_with_the_way_to_recover(shop: Shop, tmp_path: Path) -> None:
    shop.backup()
    shop.key_file.unlink()

    for args in (["snapshots"], ["backup"], ["restore", "latest", "--to", str(tmp_path / "out")]):
        proc = shop.run(*args, expect=1)
        message = one_line_error(proc)
        assert str(shop.key_file) in message and "missing" in message
        assert "CAPSULE_PASSPHRASE" in message
    assert not (tmp_path / "out").exists()
    assert not shop.key_file.exists()


@pytest.mark.parametrize(
    "args",
    [["backup"], ["snapshots"], ["verify"], ["restore", "latest", "--to", "out"], ["unlock"]],
    ids=lambda a: a[0],
)
def test_commands_without_a_repository_say_to_run_init_and_create_nothing(
    bare_shop: Shop, args: list[str]
) -> None:
    shop = bare_shop
    proc = shop.run(*args, expect=1)

    message = one_line_error(proc)
    assert str(shop.repository) in message
    assert "capsule init" in message or "no repository" in message
    assert not shop.repository.exists()
    assert not (shop.root / "out").exists()


def test_repository_of_an_unknown_format_version_is_refused(shop: Shop) -> None:
    shop.backup()
    config_path = shop.repository / "config"
    config = json.loads(config_path.read_text())
    config["version"] = 99
    config_path.write_text(json.dumps(config))

    for args in (["snapshots"], ["backup"], ["verify"]):
        message = one_line_error(shop.run(*args, expect=1))
        assert "99" in message and "upgrade" in message.lower()
    assert len(list((shop.repository / "snapshots").iterdir())) == 1


def test_init_twice_fails_and_keeps_the_first_key(shop: Shop, tmp_path: Path) -> None:
    key_before = sha256_file(shop.key_file)
    config_before = sha256_file(shop.repository / "config")

    again = shop.run("init", expect=1)
    assert "already exists" in one_line_error(again)

    # A new repository location with the same home must not overwrite the existing key either.
    elsewhere = tmp_path / "second-repository"
    second = shop.run("init", env={"CAPSULE_REPOSITORY": str(elsewhere)}, expect=1)
    message = one_line_error(second)
    assert str(shop.key_file) in message
    assert not (elsewhere / "config").exists()

    assert sha256_file(shop.key_file) == key_before
    assert sha256_file(shop.repository / "config") == config_before
    ok = shop.run("init", "--exist-ok", expect=0)
    assert "exists" in ok.stdout
    assert sha256_file(shop.key_file) == key_before
    shop.backup()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAPSULE_PACK_SIZE", "abc"),
        ("CAPSULE_PACK_SIZE", "1"),
        ("CAPSULE_LOCK_WAIT_SECONDS", "-5"),
        ("CAPSULE_LOG_LEVEL", "loud"),
    ],
)
def test_an_invalid_setting_is_a_usage_error_naming_the_setting(
    bare_shop: Shop, name: str, value: str
) -> None:
    shop = bare_shop
    proc = shop.run("snapshots", env={name: value}, expect=2)

    assert proc.stdout == ""
    message = one_line_error(proc)
    assert name.removeprefix("CAPSULE_").lower() in message.lower()
    assert not shop.repository.exists()


def test_settings_that_disagree_are_named_without_pydantic_words(bare_shop: Shop) -> None:
    proc = bare_shop.run("snapshots", env={"CAPSULE_STEP_LEASE_SECONDS": "1"}, expect=2)

    message = one_line_error(proc)
    assert message.startswith(
        "capsule: CAPSULE_STEP_LEASE_SECONDS must be at least twice CAPSULE_HEARTBEAT_SECONDS"
    )
    assert "Value error" not in message and "CAPSULE_ " not in message


def test_include_on_a_database_snapshot_is_refused_in_one_sentence_as_invalid_input(
    shop: Shop, tmp_path: Path
) -> None:
    shop.backup()

    proc = shop.run(
        "restore", "latest-database", "--to", str(tmp_path / "out"), "--include", "*.db", expect=1
    )

    assert "holds a database; --include picks files of images" in one_line_error(proc)
    assert not (tmp_path / "out").exists()
