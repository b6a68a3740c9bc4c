"""Automatic upload as an admin sees it: real `capsule` processes, a folder destination and a Google
Drive destination (the fake Drive on loopback) added with the CLI; `capsule backup --kind all`
copies to both, `verify --from` each passes, and a second backup sends only the new objects."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.drive import FakeDrive
from tests.integration.helpers import Shop, describe


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


@pytest.mark.slow
def test_backup_of_all_copies_to_a_folder_and_to_drive_and_the_next_sends_only_new_objects(
    shop: Shop, fake: FakeDrive, tmp_path: Path
) -> None:
    uploads = shop.root / "uploads"
    uploads.mkdir()
    rng = random.Random(5)
    for n in range(4):
        (uploads / f"img-{n}.jpg").write_bytes(rng.randbytes(40_000))
    env: dict[str, str | None] = {"CAPSULE_UPLOADS": str(uploads), "CAPSULE_GDRIVE_ROOT_URL": fake.url}
    nas = tmp_path / "nas"
    nas.mkdir()
    secrets = tmp_path / "client_secret.json"
    secrets.write_text(json.dumps(fake.client_config()))
    token = tmp_path / "token"
    token.write_text(fake.issue_refresh_token() + "\n")
    shop.run("destinations", "add", "folder", "nas", str(nas), env=env, expect=0)
    shop.run(
        "destinations", "add", "gdrive", "drive", "--client-secrets", str(secrets),
        "--refresh-token-file", str(token), "--bandwidth", "8MiB/s", env=env, expect=0,
    )  # fmt: skip

    first = shop.run("backup", "--kind", "all", "--json", env=env, timeout=300)
    (uploads / "img-new.jpg").write_bytes(rng.randbytes(40_000))
    second = shop.run("backup", "--kind", "all", "--json", env=env, timeout=300)

    assert first.returncode == 0, describe(first)
    assert second.returncode == 0, describe(second)
    sent = {u["destination"]: u for u in json.loads(first.stdout)["uploads"]}
    again = {u["destination"]: u for u in json.loads(second.stdout)["uploads"]}
    assert {sent[d]["status"] for d in ("nas", "drive")} == {"uploaded"}
    for name in ("nas", "drive"):
        # The second backup's two snapshots, its index files and the new image's pack; nothing old.
        assert 0 < again[name]["sent"] < sent[name]["sent"]
        assert again[name]["skipped"] == sent[name]["sent"]
        checked = shop.run("verify", "--from", name, "--read-data", env=env, timeout=300)
        assert checked.returncode == 0, describe(checked)
    listed = shop.run("destinations", "list", env=env, expect=0)
    assert "at most 8 MiB/s" in listed.stdout
    status = shop.run("status", "--check", env=env)
    assert "behind" not in status.stdout, describe(status)


@pytest.mark.slow
def test_a_backup_after_one_killed_while_uploading_makes_its_own_snapshot(shop: Shop, tmp_path: Path) -> None:
    # The killed job's snapshot is committed; only its upload is left, which the next run finishes
    # beside its own work. "Finishing it instead" would leave the owner without the snapshot asked for.
    nas = tmp_path / "nas"
    nas.mkdir()
    shop.run("destinations", "add", "folder", "nas", str(nas), expect=0)
    killed = shop.run("backup", env={"CAPSULE_FAULTS": "upload:nas:started"})
    assert killed.returncode == -9, describe(killed)
    assert len(shop.snapshots()) == 1

    again = shop.run("backup", "--json", expect=0)

    assert len(shop.snapshots()) == 2, describe(again)
    assert "finishing it now" not in again.stderr
    assert shop.run("verify", "--from", "nas", expect=0).returncode == 0
