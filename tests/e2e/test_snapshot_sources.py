"""A snapshot knows what it is a copy of: `latest-*` means the configured source, and an in-place
restore of a snapshot of another database is refused unless the owner says it is meant.

Two real databases: the shop's `pos.db` (CAPSULE_DATABASE) and `other.db`, a different database
backed up once while CAPSULE_DATABASE pointed at it.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository
from tests.integration.helpers import (
    DatabaseTemplates,
    Shop,
    file_content_digest,
    files_under,
    one_line_error,
    sha256_file,
)


def other_database(shop: Shop, templates: DatabaseTemplates) -> Path:
    return templates.copy(shop.root / "elsewhere" / "other.db", size_mib=2, seed=7)


def pragma(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def test_in_place_restore_of_latest_database_refuses_a_snapshot_of_another_database(
    shop: Shop, templates: DatabaseTemplates
) -> None:
    other = other_database(shop, templates)
    shop.backup(env={"CAPSULE_DATABASE": str(other)})
    before = sha256_file(shop.database)

    proc = shop.run("restore", "latest-database", "--in-place", expect=1)

    message = one_line_error(proc)
    assert str(shop.database.resolve()) in message
    assert str(other.resolve()) in message
    assert "--path" in message
    assert sha256_file(shop.database) == before
    assert files_under(shop.home / "safety") == []
    assert files_under(shop.staging) == []


def test_in_place_restore_of_a_snapshot_of_another_database_by_id_is_refused_naming_both(
    shop: Shop, templates: DatabaseTemplates
) -> None:
    other = other_database(shop, templates)
    sid = shop.backup(env={"CAPSULE_DATABASE": str(other)})["snapshot_id"]
    before = sha256_file(shop.database)

    proc = shop.run("restore", sid[:12], "--in-place", expect=1)

    message = one_line_error(proc)
    assert str(shop.database.resolve()) in message and str(other.resolve()) in message
    assert "--from-other-source" in message
    assert sha256_file(shop.database) == before
    assert files_under(shop.home / "safety") == []
    assert files_under(shop.staging) == []


def test_from_other_source_lets_an_in_place_restore_of_another_database_go_ahead(
    shop: Shop, templates: DatabaseTemplates
) -> None:
    other = other_database(shop, templates)
    wanted = file_content_digest(other)
    sid = shop.backup(env={"CAPSULE_DATABASE": str(other)})["snapshot_id"]
    shop.backup()  # the shop's own snapshot is newer: --path picks the other one

    proc = shop.run(
        "restore", "latest-database", "--path", str(other), "--in-place", "--from-other-source", expect=0
    )

    assert f"Restored snapshot {sid[:12]}" in proc.stdout
    assert file_content_digest(shop.database) == wanted
    assert len(files_under(shop.home / "safety")) == 1


def test_latest_database_is_the_newest_snapshot_of_the_configured_database(
    shop: Shop, templates: DatabaseTemplates, tmp_path: Path
) -> None:
    own = shop.backup()["snapshot_id"]
    other = other_database(shop, templates)
    newer = shop.backup(env={"CAPSULE_DATABASE": str(other)})["snapshot_id"]

    proc = shop.restore("latest-database", tmp_path / "restored")
    plain = shop.restore("latest", tmp_path / "plain")

    assert f"Snapshot {own[:12]} restored" in proc.stdout
    assert f"Snapshot {own[:12]} restored" in plain.stdout
    assert sha256_file(tmp_path / "restored" / "pos.db") == shop.manifest_sha256(own)
    picked = shop.restore("latest-database", tmp_path / "picked", "--path", str(other))
    assert f"Snapshot {newer[:12]} restored" in picked.stdout


def test_snapshots_record_their_source_and_filter_by_host_path_and_tag(
    shop: Shop, templates: DatabaseTemplates
) -> None:
    own = shop.backup()["snapshot_id"]
    other = other_database(shop, templates)
    theirs = shop.backup(env={"CAPSULE_DATABASE": str(other)})["snapshot_id"]

    rows = {r["snapshot_id"]: r for r in shop.snapshots()}
    identity = rows[own]["identity"]
    assert identity["host"] == socket.gethostname()
    assert identity["path"] == str(shop.database.resolve())
    assert identity["page_size"] == 4096
    assert identity["application_id"] == 0
    assert len(identity["schema_sha256"]) == 64
    assert rows[theirs]["identity"]["path"] == str(other.resolve())

    def listed(*args: str) -> list[str]:
        proc = shop.run("snapshots", "--json", *args, expect=0)
        return [r["snapshot_id"] for r in json.loads(proc.stdout)]

    assert listed("--path", str(other)) == [theirs]
    assert listed("--path", str(shop.database), "--path", str(other)) == [own, theirs]
    assert listed("--host", socket.gethostname()) == [own, theirs]
    assert listed("--host", "another-till") == []
    assert listed("--tag", "nightly") == []
    table = shop.run("snapshots", "--path", str(other), expect=0).stdout
    assert theirs[:12] in table and own[:12] not in table


def test_latest_database_with_no_snapshot_of_the_configured_database_names_the_others(
    shop: Shop, templates: DatabaseTemplates, tmp_path: Path
) -> None:
    other = other_database(shop, templates)
    theirs = shop.backup(env={"CAPSULE_DATABASE": str(other)})["snapshot_id"]

    proc = shop.restore("latest-database", tmp_path / "out", expect=1)

    message = one_line_error(proc)
    assert str(other.resolve()) in message and theirs[:12] in message
    assert "--path" in message and "--host" in message
    assert not (tmp_path / "out").exists()


def test_in_place_restore_refuses_a_snapshot_of_a_database_with_another_application_id(
    shop: Shop,
) -> None:
    pragma(shop.database, "PRAGMA application_id = 1001")
    sid = shop.backup()["snapshot_id"]
    pragma(shop.database, "PRAGMA application_id = 2002")
    before = sha256_file(shop.database)

    proc = shop.run("restore", sid[:12], "--in-place", expect=1)

    message = one_line_error(proc)
    assert "1001" in message and "2002" in message
    assert sha256_file(shop.database) == before
    assert files_under(shop.home / "safety") == []


def test_in_place_restore_of_a_snapshot_taken_before_a_schema_change_goes_ahead_with_a_note(
    shop: Shop,
) -> None:
    content = file_content_digest(shop.database)
    sid = shop.backup()["snapshot_id"]
    pragma(shop.database, "CREATE TABLE loyalty_cards (id INTEGER PRIMARY KEY, points INTEGER)")

    proc = shop.run("restore", sid[:12], "--in-place", expect=0)

    assert "schema" in proc.stdout
    assert file_content_digest(shop.database) == content


def reseal_without_identity(shop: Shop, sid: str, **changes: str) -> str:
    """Replace snapshot `sid` by its manifest as Capsule wrote it before identities: no `identity`."""
    settings = Settings(database=shop.database, repository=shop.repository, home=shop.home)
    repo = open_repository(settings)
    body = json.loads(repo.load_snapshot(sid).model_dump_json(exclude={"identity"}))
    old = repo.save_sealed("snapshots", json.dumps({**body, **changes}).encode())
    shop.snapshot_file(sid).unlink()
    return old


def test_a_snapshot_written_before_identities_is_still_latest_database_and_restores_in_place(
    shop: Shop,
) -> None:
    content = file_content_digest(shop.database)
    old = reseal_without_identity(shop, shop.backup()["snapshot_id"])
    pragma(shop.database, "DELETE FROM sale_items")

    proc = shop.run("restore", "latest-database", "--in-place", expect=0)

    assert f"Restored snapshot {old[:12]}" in proc.stdout
    assert file_content_digest(shop.database) == content
    [row] = shop.snapshots()
    assert row["identity"] == {
        "host": socket.gethostname(),
        "path": str(shop.database.resolve()),
        "application_id": None,
        "page_size": None,
        "schema_sha256": None,
    }


def test_a_snapshot_written_before_identities_of_another_path_is_refused_in_place(shop: Shop) -> None:
    elsewhere = str(shop.root / "elsewhere" / "pos.db")
    old = reseal_without_identity(shop, shop.backup()["snapshot_id"], source=elsewhere)
    before = sha256_file(shop.database)

    proc = shop.run("restore", old[:12], "--in-place", expect=1)

    assert elsewhere in one_line_error(proc)
    assert sha256_file(shop.database) == before
