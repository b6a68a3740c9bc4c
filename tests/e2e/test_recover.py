"""`capsule recover --from DEST` with real `capsule` processes: a shop backs up twice and syncs; a new
machine with only the key gets back the repository, the jobs, the audit history and the settings,
restores byte-identical data and goes on backing up where the old machine stopped."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.drive import FakeDrive
from tests.integration.helpers import Shop, file_content_digest, sha256_file


def json_of(shop: Shop, *args: str, expect: int = 0) -> Any:
    return json.loads(shop.run(*args, "--json", expect=expect).stdout)


def old_shop_synced(shop: Shop, copy: Path) -> dict[str, Any]:
    """Two backups, a destination, a sync; the jobs and the audit trail as the old machine sees them."""
    shop.run("backup", expect=0)
    shop.run("backup", expect=0)
    shop.run("destinations", "add", "folder", "usb", str(copy), expect=0)
    [synced] = json_of(shop, "sync")["destinations"]
    assert synced["ok"] and synced["event_log_written"]
    return {"jobs": json_of(shop, "jobs"), "audit": json_of(shop, "audit")}


def new_machine(tmp_path: Path, shop: Shop) -> Shop:
    new = Shop(tmp_path / "new-machine")
    new.home.mkdir(parents=True)
    shutil.copy2(shop.key_file, new.key_file)
    return new


@pytest.mark.slow
def test_a_new_machine_recovers_the_repository_the_jobs_and_the_audit_history_from_a_folder_copy(
    shop: Shop, tmp_path: Path
) -> None:
    copy = tmp_path / "usb" / "capsule"
    copy.mkdir(parents=True)
    old = old_shop_synced(shop, copy)
    new = new_machine(tmp_path, shop)

    recovered = json_of(new, "recover", "--from", str(copy))

    assert recovered["objects_copied"] > 0 and recovered["refused_copies"] == []
    assert recovered["cancelled_jobs"] == []  # the old machine had finished every job
    assert recovered["events"] == len(old["audit"])
    assert json_of(new, "jobs") == old["jobs"]
    trail = json_of(new, "audit")
    assert trail[: len(old["audit"])] == old["audit"]
    [event] = [e for e in trail if e["type"] == "RepositoryRecovered"]
    assert event["data"]["source"] == str(copy) and event["actor"].startswith("person:")
    assert event["data"]["head_position"] == old["audit"][-1]["position"]
    assert json_of(new, "audit", "--verify")["events"] == len(trail)
    assert json_of(new, "verify", "--read-data")["ok"] is True
    [usb] = json_of(new, "destinations", "list")["destinations"]
    assert (usb["name"], usb["path"]) == ("usb", str(copy))

    out = tmp_path / "restored"
    [db] = json_of(new, "restore", "latest-database", "--host", socket.gethostname(), "--to", str(out))[
        "restored"
    ]
    assert sha256_file(Path(db["path"])) == db["sha256"]
    assert file_content_digest(Path(db["path"])) == file_content_digest(shop.database)

    new.database.parent.mkdir(parents=True)
    shutil.copy2(shop.database, new.database)
    before = sum(f.stat().st_size for f in new.repository.rglob("*") if f.is_file())
    third = json_of(new, "backup")
    grew = sum(f.stat().st_size for f in new.repository.rglob("*") if f.is_file()) - before
    assert third["totals"]["new_blobs"] < third["totals"]["blobs"] // 10
    assert grew < before // 10
    jobs = json_of(new, "jobs")  # newest first: the backup, the restore, then the old machine's
    assert [j["job_type"] for j in jobs[:2]] == ["backup", "restore"] and jobs[2:] == old["jobs"]


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


def add_drive(shop: Shop, fake: FakeDrive, name: str, env: dict[str, str | None]) -> None:
    client, token = shop.root / "client.json", shop.root / f"token-{name}"
    client.write_text(json.dumps(fake.client_config()))
    token.write_text(fake.credentials().refresh_token + "\n")
    shop.run(
        "destinations",
        "add",
        "gdrive",
        name,
        "--client-secrets",
        str(client),
        "--refresh-token-file",
        str(token),
        env=env,
        expect=0,
    )


@pytest.mark.slow
def test_a_new_machine_recovers_from_google_drive_and_the_destination_it_used_works_at_once(
    shop: Shop, fake: FakeDrive, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {"CAPSULE_GDRIVE_ROOT_URL": fake.url}
    shop.run("backup", expect=0)
    add_drive(shop, fake, "drive", env)
    add_drive(shop, fake, "spare", env)
    shop.run("sync", "drive", env=env, expect=0)
    old_jobs = json_of(shop, "jobs")

    new = new_machine(tmp_path, shop)
    add_drive(new, fake, "drive", env)  # consent on the new machine, to reach the copy
    recovered = json.loads(new.run("recover", "--from", "drive", "--json", env=env, expect=0).stdout)

    assert recovered["needs_credentials"] == ["spare"]
    assert json_of(new, "jobs") == old_jobs
    listed = {d["name"]: d for d in json_of(new, "destinations", "list")["destinations"]}
    assert listed["drive"]["needs_credentials"] is None
    assert "another secrets key" in listed["spare"]["needs_credentials"]
    trail = [e["type"] for e in json_of(new, "audit")]
    assert trail[-3:] == ["RepositoryRecovered", "DestinationRemoved", "DestinationAdded"]
    assert json_of(new, "verify", "--read-data")["ok"] is True

    new.database.parent.mkdir(parents=True)
    shutil.copy2(shop.database, new.database)
    backed_up = json.loads(new.run("backup", "--json", env=env, expect=0).stdout)
    uploads = {u["destination"]: u for u in backed_up["uploads"]}
    assert uploads["drive"]["status"] == "uploaded"  # the new snapshot went up by itself
    assert 0 < uploads["drive"]["sent"] < recovered["objects_copied"]
    assert uploads["spare"]["status"] == "failed"  # its secrets were sealed on the old machine
    [synced] = json.loads(new.run("sync", "drive", "--json", env=env, expect=0).stdout)["destinations"]
    assert synced["ok"] and synced["event_log_written"] and synced["sent"] == 0
