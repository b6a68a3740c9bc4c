"""One damaged snapshot harms only itself: it is listed as damaged, skipped by `latest-*`, named by
`verify`, and every other command keeps working.

Two kinds of damage: a byte flipped in the images snapshot's manifest file (authentication fails),
and a manifest sealed with the repository's own key whose entry path leaves the restore folder (it
authenticates, but validation refuses it).
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository
from tests.integration.helpers import Shop, file_content_digest, flip_byte, sha256_file
from tests.integration.uploads import describe_tree, make_uploads


def images_env(shop: Shop) -> dict[str, str]:
    return {"CAPSULE_UPLOADS": str(shop.root / "uploads")}


@pytest.fixture
def both(shop: Shop) -> tuple[Shop, str, str]:
    """A shop with one database snapshot and one images snapshot, taken by one backup."""
    make_uploads(shop.root / "uploads")
    proc = shop.run("backup", "--kind", "all", "--json", env=images_env(shop), expect=0)
    database, files = json.loads(proc.stdout)["snapshots"]
    return shop, database["snapshot_id"], files["snapshot_id"]


def seal_escaping_manifest(shop: Shop) -> str:
    """A files snapshot sealed with the repository's key whose only entry is `../outside.jpg`."""
    body: dict[str, Any] = {
        "version": 2,
        "kind": "files",
        "time": datetime(2099, 1, 1, tzinfo=UTC).isoformat(),  # the newest of all
        "hostname": socket.gethostname(),
        "source": str((shop.root / "uploads").resolve()),
        "entries": [
            {"path": "../outside.jpg", "size": 1, "mode": 0o644, "mtime_ns": 0, "sha256": "0" * 64},
        ],
        "totals": {
            "files": 1,
            "bytes": 1,
            "blobs": 1,
            "new_blobs": 0,
            "new_bytes": 0,
            "stored_bytes": 0,
            "duration_seconds": 0,
        },
    }
    settings = Settings(database=shop.database, repository=shop.repository, home=shop.home)
    return open_repository(settings).save_sealed("snapshots", json.dumps(body).encode())


def listed(shop: Shop, *args: str) -> dict[str, dict[str, Any]]:
    proc = shop.run("snapshots", "--json", *args, env=images_env(shop), expect=0)
    return {row["snapshot_id"]: row for row in json.loads(proc.stdout)}


def test_a_byte_flipped_in_the_images_manifest_harms_only_that_snapshot(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, files = both
    flip_byte(shop.snapshot_file(files))

    restored = shop.run("restore", "latest-database", "--to", str(tmp_path / "db"), expect=0)
    assert f"Snapshot {database[:12]} restored" in restored.stdout
    assert sha256_file(tmp_path / "db" / "pos.db") == shop.manifest_sha256(database)

    rows = listed(shop)
    assert rows[database].get("damaged") is None
    assert rows[files]["damaged"] and files[:12] in rows[files]["damaged"]
    table = shop.run("snapshots", env=images_env(shop), expect=0).stdout
    assert files[:12] in table and "damaged" in table.lower()

    shop.run("backup", "--kind", "all", env=images_env(shop), expect=0)
    shop.run("status", expect=0)
    verify = shop.run("verify", expect=3)
    assert files[:12] in verify.stdout


def test_a_sealed_manifest_with_an_escaping_path_harms_only_itself(
    both: tuple[Shop, str, str], tmp_path: Path
) -> None:
    shop, database, files = both
    forged = seal_escaping_manifest(shop)

    rows = listed(shop)
    assert set(rows) == {database, files, forged}
    assert "../outside.jpg" in rows[forged]["damaged"]
    assert rows[files].get("damaged") is None

    images = shop.run("restore", "latest-files", "--to", str(tmp_path / "images"), env=images_env(shop))
    assert images.returncode == 0, images.stderr
    assert f"of snapshot {files[:12]}" in images.stdout
    assert describe_tree(tmp_path / "images") == describe_tree(shop.root / "uploads")
    assert not (tmp_path / "outside.jpg").exists()

    again = json.loads(shop.run("backup", "--kind", "all", "--json", env=images_env(shop), expect=0).stdout)
    new_database, new_files = again["snapshots"]
    assert new_files["parent"] == files  # the forged one is newer but not a parent to reuse
    shop.run("restore", new_database["snapshot_id"][:12], "--to", str(tmp_path / "db"), expect=0)
    assert file_content_digest(tmp_path / "db" / "pos.db", immutable=True) == file_content_digest(
        shop.database
    )
    shop.run("status", expect=0)
    refused = shop.run("restore", forged[:12], "--to", str(tmp_path / "forged"), env=images_env(shop))
    assert refused.returncode != 0 and "../outside.jpg" in refused.stderr
    verify = shop.run("verify", expect=3)
    assert forged[:12] in verify.stdout
