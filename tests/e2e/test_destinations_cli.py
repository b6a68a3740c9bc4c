"""`capsule destinations` as an admin on a server without a browser uses it: real `capsule`
processes on a real shop. A Drive destination's client secret and refresh token, given in files,
never appear in plain text anywhere Capsule writes or prints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from capsule.orchestrator.destinations import load, open_secrets
from tests.integration.helpers import Shop, in_process_settings

CLIENT_SECRET = "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f3a"
REFRESH_TOKEN = "1//0gRecognisable-Refresh-Token-9c2e"


def drive_files(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    client = folder / "client_secret.json"
    client.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "5678.apps.googleusercontent.com",
                    "client_secret": CLIENT_SECRET,
                    "token_uri": "https://oauth2.googleapis.com/token",
                    "redirect_uris": ["http://localhost"],
                }
            }
        )
    )
    token = folder / "refresh-token"
    token.write_text(REFRESH_TOKEN + "\n")
    return client, token


@pytest.mark.slow
def test_an_admin_adds_lists_tests_and_removes_a_folder_destination(shop: Shop, tmp_path: Path) -> None:
    folder = tmp_path / "nas" / "capsule"
    folder.mkdir(parents=True)

    added = shop.run("destinations", "add", "folder", "nas", str(folder), expect=0)
    listed = shop.run("destinations", "list", expect=0).stdout
    tested = shop.run("destinations", "test", "nas", expect=0).stdout
    bad_name = shop.run("destinations", "add", "folder", "Nas", str(folder), expect=2)
    duplicate = shop.run("destinations", "add", "folder", "nas", str(tmp_path), expect=1)
    unknown = shop.run("destinations", "remove", "usb", expect=1)
    removed = shop.run("destinations", "remove", "nas", expect=0)

    assert added.stdout.startswith(f"Added the folder destination nas: {folder}.")
    assert listed.startswith(f"nas  folder        {folder}  added ")
    assert tested.startswith("nas: ok, wrote, listed, read back and removed a probe object")
    assert "lowercase letters, digits and `-`, at most 32" in bad_name.stderr
    assert "capsule destinations remove nas" in duplicate.stderr
    assert unknown.stderr == "capsule: there is no destination named `usb`; the destinations: nas\n"
    assert removed.stdout.startswith("Removed the folder destination nas")
    assert shop.run("destinations", expect=0).stdout.startswith("No destination yet")
    assert (folder / "keys").is_dir()  # what it holds stays


@pytest.mark.slow
def test_a_probe_killed_half_way_leaves_nothing_that_stops_a_copy(shop: Shop, tmp_path: Path) -> None:
    # The probe object lies among the destination's locks: one left by a killed probe must read as a
    # lock of a process that is gone (removed as stale), not as an unreadable lock that stops every
    # copy for half an hour.
    folder = tmp_path / "nas" / "capsule"
    folder.mkdir(parents=True)
    shop.run("destinations", "add", "folder", "nas", str(folder), expect=0)
    killed = shop.run("destinations", "test", "nas", env={"CAPSULE_FAULTS": "destinations:probe-written"})
    assert killed.returncode == -9
    assert [p.name.startswith("probe-") for p in (folder / "locks").iterdir()] == [True]

    shop.run("sync", "nas", expect=0)
    verified = shop.run("verify", "--from", "nas")
    assert verified.returncode == 0, verified.stderr
    assert "removed a stale repository lock" in verified.stderr
    assert list((folder / "locks").iterdir()) == []


@pytest.mark.slow
def test_an_unmounted_folder_destination_fails_its_test_saying_what_to_check(
    shop: Shop, tmp_path: Path
) -> None:
    shop.run("destinations", "add", "folder", "usb", str(tmp_path / "usb" / "capsule"), expect=0)

    proc = shop.run("destinations", "test", "usb", expect=1)
    doc = json.loads(shop.run("destinations", "test", "usb", "--json", expect=1).stdout)

    assert "does not exist: if it is on a NAS share or a USB disk, check that it is mounted" in proc.stderr
    assert (doc["ok"], doc["category"]) == (False, "unavailable")


@pytest.mark.slow
def test_drive_secrets_are_never_in_plain_text_in_the_home_the_repository_the_log_or_any_output(
    shop: Shop, tmp_path: Path
) -> None:
    client, token = drive_files(tmp_path / "from-the-laptop")
    nas = tmp_path / "nas"
    nas.mkdir()
    # Google's address cannot be reached from here: one try each, rather than the backoff of eight.
    debug = {"CAPSULE_LOG_LEVEL": "debug", "CAPSULE_GDRIVE_ATTEMPTS": "1"}
    runs: list[subprocess.CompletedProcess[str]] = [
        shop.run(
            "destinations",
            "add",
            "gdrive",
            "drive",
            "--client-secrets",
            str(client),
            "--refresh-token-file",
            str(token),
            env=debug,
            expect=0,
        ),
        shop.run("destinations", "renew", "drive", "--refresh-token-file", str(token), env=debug, expect=0),
        shop.run("destinations", "add", "folder", "nas", str(nas), env=debug, expect=0),
        shop.run("destinations", "list", env=debug, expect=0),
        shop.run("destinations", "list", "--json", env=debug, expect=0),
        shop.run("destinations", "test", "nas", env=debug, expect=0),
        shop.run("destinations", "test", "drive", "--json", env=debug),
        shop.run("audit", env=debug, expect=0),
        shop.run("audit", "--json", env=debug, expect=0),
        shop.run("settings", "show", env=debug, expect=0),
        shop.run("settings", "show", "--json", env=debug, expect=0),
        shop.run("status", env=debug, expect=0),
        shop.run("status", "--json", env=debug, expect=0),
        shop.run("backup", "--kind", "database", env=debug, expect=0),
        shop.run("replay", env=debug, expect=0),
    ]

    listed = json.loads(runs[4].stdout)["destinations"]
    drive = next(d for d in listed if d["name"] == "drive")
    assert (drive["client_secret"], drive["refresh_token"]) == ("********", "********")
    audit = json.loads(runs[8].stdout)
    added = next(e for e in audit if e["type"] == "DestinationAdded" and e["data"]["name"] == "drive")
    assert added["data"]["refresh_token"].startswith("sealed:v1:")
    outputs = [text for proc in runs for text in (proc.stdout, proc.stderr)]
    files = [p for root in (shop.home, shop.repository, nas) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "capsule.log" for p in files), "the log file is among what is searched"
    assert any(p.suffix == ".db" or "event" in p.name for p in files), (
        "the event log is among what is searched"
    )
    public = b"5678.apps.googleusercontent.com"  # recorded in plain text: the search would find a secret
    assert any(public in p.read_bytes() for p in files)
    for secret in (CLIENT_SECRET, REFRESH_TOKEN):
        assert not [i for i, text in enumerate(outputs) if secret in text]
        assert not [p for p in files if secret.encode() in p.read_bytes()]

    # ... and the seals open again, for the backend alone.
    settings = in_process_settings(shop)
    assert open_secrets(settings, load(settings).get("drive")) == (CLIENT_SECRET, REFRESH_TOKEN)


def test_adding_a_folder_that_is_not_there_says_so_at_once_and_adds_it(shop: Shop, tmp_path: Path) -> None:
    # A USB disk not plugged in yet may be added; a mistyped path should not wait for the first
    # backup to be found out.
    missing = tmp_path / "usb" / "capsule"

    added = shop.run("destinations", "add", "folder", "usb", str(missing), expect=0)
    as_json = json.loads(
        shop.run("destinations", "add", "folder", "usb2", str(missing), "--json", expect=0).stdout
    )
    missing.mkdir(parents=True)
    present = shop.run("destinations", "add", "folder", "usb3", str(missing), expect=0)

    assert added.stdout.startswith(f"Added the folder destination usb: {missing}.")
    assert f"the destination folder {missing} does not exist" in added.stderr
    assert "Until it is there, each backup says its copy to usb failed" in added.stderr
    assert "does not exist" in as_json["warning"]
    assert "does not exist" not in present.stderr
    assert (
        json.loads(shop.run("destinations", "list", "--json", expect=0).stdout)["destinations"][0]["name"]
        == "usb"
    )
