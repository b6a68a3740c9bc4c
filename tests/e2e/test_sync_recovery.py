"""The disaster-recovery drill with real `capsule` processes: a shop backs up its database and its
images and copies the repository to a folder destination; a new machine with an empty Capsule home
and only the key file lists, restores, browses and verifies from that copy, and finds damage in it."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Shop, connect_read_only, file_content_digest, flip_byte, sha256_file
from tests.integration.uploads import describe_tree, make_uploads


def json_of(shop: Shop, *args: str, expect: int = 0, env: dict[str, str | None] | None = None) -> Any:
    return json.loads(shop.run(*args, "--json", expect=expect, env=env).stdout)


@pytest.mark.slow
def test_a_new_machine_restores_byte_identical_data_from_a_folder_copy_and_verify_names_damage(
    shop: Shop, tmp_path: Path
) -> None:
    uploads = shop.root / "uploads"
    make_uploads(uploads)
    env: dict[str, str | None] = {"CAPSULE_UPLOADS": str(uploads)}
    copy = tmp_path / "usb" / "capsule"
    copy.mkdir(parents=True)
    shop.run("backup", "--kind", "all", env=env, expect=0)
    shop.run("destinations", "add", "folder", "usb", str(copy), expect=0)

    first = json_of(shop, "sync")
    second = json_of(shop, "sync", "usb")
    printed = shop.run("sync", expect=0).stdout

    [sent] = first["destinations"]
    assert (sent["name"], sent["ok"], sent["skipped"]) == ("usb", True, 0)
    assert sent["sent_by_kind"]["snapshots"] == 2 and sent["sent_bytes"] > 0
    [again] = second["destinations"]
    assert (again["sent"], again["sent_bytes"], again["skipped"]) == (0, 0, sent["sent"])
    assert printed == f"usb: nothing to send; {sent['sent']} already there.\n"

    # A new machine: an empty home holding only the key file, no repository, no event log.
    new = Shop(tmp_path / "new-machine")
    new.home.mkdir(parents=True)
    shutil.copy2(shop.key_file, new.key_file)
    host = socket.gethostname()

    listed = json_of(new, "snapshots", "--from", str(copy))
    assert sorted(s["kind"] for s in listed) == ["database", "files"]
    assert not new.repository.exists()

    out = tmp_path / "recovered"
    db = json_of(
        new, "restore", "latest-database", "--from", str(copy), "--host", host, "--to", str(out / "db")
    )
    files = json_of(
        new, "restore", "latest-files", "--from", str(copy), "--host", host, "--to", str(out / "img")
    )
    [restored_db] = db["restored"]
    restored_path = Path(restored_db["path"])
    assert sha256_file(restored_path) == restored_db["sha256"]
    assert file_content_digest(restored_path) == file_content_digest(shop.database)
    assert connect_read_only(restored_path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert describe_tree(out / "img") == describe_tree(uploads)
    assert files["files"] == 6  # make_uploads: six regular files beside links and folders
    assert json_of(new, "verify", "--from", str(copy), "--read-data")["ok"] is True

    # One lost image, found, listed and read back from the copy alone.
    [files_id] = [s["snapshot_id"] for s in listed if s["kind"] == "files"]
    found = json_of(new, "find", "red.jpg", "--from", str(copy))
    assert [(r["snapshot_id"], r["path"]) for r in found] == [(files_id, "cat1/red.jpg")]
    folder = json_of(new, "ls", files_id[:8], "cat1", "--from", str(copy))
    assert [e["name"] for e in folder["entries"]] == ["blue.jpg", "notes.txt", "red.jpg"]
    red = tmp_path / "red.jpg"
    assert new.cat(files_id[:8], "cat1/red.jpg", red, extra=("--from", str(copy))).returncode == 0
    assert red.read_bytes() == (uploads / "cat1" / "red.jpg").read_bytes()

    pack = sorted(p for p in (copy / "data").glob("*/*") if not p.name.startswith("."))[0]
    flip_byte(pack)
    damaged = new.run("verify", "--from", str(copy), "--read-data", expect=3)
    assert pack.name[:12] in damaged.stdout + damaged.stderr
    assert json_of(shop, "verify", "--read-data")["ok"] is True  # the local repository is untouched


@pytest.mark.slow
def test_from_a_folder_without_a_repository_or_an_unknown_name_says_what_to_give(
    shop: Shop, tmp_path: Path
) -> None:
    empty = shop.run("snapshots", "--from", str(tmp_path), expect=1)
    unknown = shop.run("verify", "--from", "usb", expect=1)

    assert f"there is no repository in {tmp_path}: give the folder that holds its `config`" in empty.stderr
    assert "there is no destination named `usb`" in unknown.stderr
    assert "--from takes a destination's name or the path of a folder holding a copy" in unknown.stderr
