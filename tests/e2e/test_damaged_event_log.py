"""A damaged event log: every command says so and names the repair; backups and restores go on.

The log is damaged as a disk would damage it: its last page overwritten with noise after the WAL
was checkpointed into the file, or its header overwritten. The damaged file must never be lost: it
is set aside under a dated name, byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import (
    Shop,
    file_content_digest,
    message_lines,
    one_line_error,
    running,
    sha256_file,
)
from tests.servers import in_ci


def event_log(shop: Shop) -> Path:
    return shop.home / "events.db"


def checkpointed(log: Path) -> int:
    """Fold the log's WAL into its file (as a quiet shop's log is); return its page size."""
    conn = sqlite3.connect(log)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def damage_last_page(log: Path) -> str:
    """Overwrite the log's last page with noise; return the damaged file's SHA-256."""
    page = checkpointed(log)
    data = bytearray(log.read_bytes())
    data[-page:] = random.Random(16).randbytes(page)
    log.write_bytes(bytes(data))
    return sha256_file(log)


def damage_header(log: Path) -> str:
    """Overwrite the first 100 bytes, SQLite's file header: the file no longer reads as a database."""
    checkpointed(log)
    data = bytearray(log.read_bytes())
    data[:100] = b"\x00" * 100
    log.write_bytes(bytes(data))
    return sha256_file(log)


def set_aside(shop: Shop) -> list[Path]:
    return sorted(p for p in shop.home.iterdir() if p.name.startswith("events.db.damaged-"))


def files_with_digest(folder: Path, digest: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and sha256_file(p) == digest]


def audit(shop: Shop) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(shop.run("audit", "--json", expect=0).stdout)
    return rows


def last_snapshot(shop: Shop) -> dict[str, object]:
    found: dict[str, object] = json.loads(shop.run("status", "--json", expect=0).stdout)["last_snapshot"]
    return found


def test_status_audit_and_replay_say_the_event_log_is_damaged_and_name_the_repair(shop: Shop) -> None:
    shop.backup()
    shop.backup()
    log = event_log(shop)
    damaged = damage_last_page(log)

    for command in ("status", "audit", "replay"):
        proc = shop.run(command, expect=3)
        message = one_line_error(proc)
        assert f"the event log {log} is damaged" in message, message
        assert "capsule repair-log" in message, message
        assert "report this" not in message
    assert sha256_file(log) == damaged, "a command that only reads must not move or change the log"
    assert set_aside(shop) == []


def test_an_event_log_that_is_not_a_database_is_reported_as_damaged(shop: Shop) -> None:
    shop.backup()
    log = event_log(shop)
    damage_header(log)

    message = one_line_error(shop.run("status", expect=3))

    assert f"the event log {log} is damaged" in message and "capsule repair-log" in message


@pytest.mark.parametrize(
    "garbled", [b'"step": "\xff\xffmmit"', b'"step"; "commit"'], ids=["not-utf-8", "not-json"]
)
def test_an_event_whose_data_is_garbled_is_reported_and_repaired(shop: Shop, garbled: bytes) -> None:
    shop.backup()
    log = event_log(shop)
    checkpointed(log)
    data = log.read_bytes()
    assert data.count(b'"step": "commit"') >= 1
    log.write_bytes(data.replace(b'"step": "commit"', garbled, 1))

    message = one_line_error(shop.run("audit", expect=3))
    repaired = shop.run("repair-log", expect=0)

    assert f"the event log {log} is damaged" in message and "capsule repair-log" in message
    assert "was damaged" in repaired.stdout and len(set_aside(shop)) == 1
    assert [e["type"] for e in audit(shop)] == ["EventLogStarted", "SnapshotRecovered"]


def test_an_event_log_path_that_is_a_folder_is_named_as_such_not_as_an_unreachable_server(
    shop: Shop,
) -> None:
    folder = shop.root / "not-a-file.db"
    folder.mkdir()

    for command in ("status", "backup"):
        message = one_line_error(
            shop.run(command, env={"CAPSULE_EVENT_STORE_URL": f"sqlite:///{folder}"}, expect=1)
        )
        assert f"the event log {folder} cannot be opened or written" in message, message
        assert "running" not in message and "report this" not in message


def test_backup_with_a_damaged_event_log_sets_it_aside_and_backs_up(shop: Shop) -> None:
    first = shop.backup()
    log = event_log(shop)
    damaged = damage_last_page(log)

    proc = shop.run("backup", "--json", expect=0)

    snapshot = json.loads(proc.stdout)["snapshot_id"]
    assert {s["snapshot_id"] for s in shop.snapshots()} == {first["snapshot_id"], snapshot}
    notes = [line for line in message_lines(proc.stderr) if "event log" in line]
    assert len(notes) == 1, proc.stderr
    aside = set_aside(shop)
    assert aside and str(aside[0]) in notes[0] and "capsule audit" in notes[0]
    assert files_with_digest(shop.home, damaged) == [aside[0]], "the damaged log is kept, byte for byte"
    status = json.loads(shop.run("status", "--json", expect=0).stdout)
    assert status["last_snapshot"]["snapshot_id"] == snapshot
    types = [e["type"] for e in audit(shop)]
    assert types[0] == "EventLogStarted" and "BackupCompleted" in types


def test_two_backups_that_find_the_log_damaged_at_once_set_it_aside_once(shop: Shop) -> None:
    shop.backup()
    damaged = damage_last_page(event_log(shop))

    with running(shop.popen("backup")) as first, running(shop.popen("backup")) as second:
        outs = [first.communicate(timeout=120), second.communicate(timeout=120)]

    assert [first.returncode, second.returncode] == [0, 0], outs
    assert all("Traceback" not in err for _, err in outs), outs
    notes = [line for _, err in outs for line in message_lines(err) if "event log" in line]
    assert len(notes) == 1, outs
    assert files_with_digest(shop.home, damaged) == set_aside(shop)[:1]
    types = [e["type"] for e in audit(shop)]
    assert types.count("EventLogStarted") == 1 and types.count("BackupCompleted") == 2


def test_restore_with_a_damaged_event_log_sets_it_aside_and_restores(shop: Shop, tmp_path: Path) -> None:
    shop.backup()
    damaged = damage_last_page(event_log(shop))
    out = tmp_path / "restored"

    proc = shop.restore("latest-database", out)

    assert file_content_digest(out / shop.db_name) == file_content_digest(shop.database)
    assert len([line for line in message_lines(proc.stderr) if "event log" in line]) == 1, proc.stderr
    assert files_with_digest(shop.home, damaged) == set_aside(shop)[:1]
    assert any(e["type"] == "RestoreCompleted" for e in audit(shop))


@pytest.mark.slow
def test_repair_log_sets_the_damaged_log_aside_and_records_the_repositorys_snapshots(shop: Shop) -> None:
    shop.backup()
    latest = shop.backup()["snapshot_id"]
    log = event_log(shop)
    damaged = damage_last_page(log)

    proc = shop.run("repair-log", expect=0)

    aside = set_aside(shop)
    assert files_with_digest(shop.home, damaged) == [aside[0]]
    assert str(aside[0]) in proc.stdout and "2 snapshots" in proc.stdout, proc.stdout
    events = audit(shop)
    assert [e["type"] for e in events] == ["EventLogStarted", "SnapshotRecovered", "SnapshotRecovered"]
    started = events[0]
    assert str(started["actor"]).startswith("person:")
    data = started["data"]
    assert isinstance(data, dict)
    assert data["damaged_log"] == str(log) and str(aside[0]) in data["set_aside_as"]
    assert data["reason"] and "\n" not in str(data["reason"]) and data["detected_by"] == "repair-log"
    status = json.loads(shop.run("status", "--json", expect=0).stdout)
    assert status["last_snapshot"]["snapshot_id"] == latest
    shop.run("replay", expect=0)
    assert last_snapshot(shop) == status["last_snapshot"]
    # The new log is sealed from its first event, with the key the old one was sealed with.
    chain = json.loads(shop.run("audit", "--verify", "--json", expect=0).stdout)
    assert chain["events"] == 3 and chain["chained_after"] == 0, chain

    again = shop.run("repair-log", expect=0)

    assert "not damaged" in again.stdout
    assert set_aside(shop) == aside and audit(shop) == events


def test_repair_log_of_a_log_that_is_not_a_database_starts_a_new_one(shop: Shop) -> None:
    shop.backup()
    damaged = damage_header(event_log(shop))

    shop.run("repair-log", expect=0)

    assert files_with_digest(shop.home, damaged) == set_aside(shop)[:1]
    assert [e["type"] for e in audit(shop)] == ["EventLogStarted", "SnapshotRecovered"]


def test_repair_log_leaves_a_damaged_log_alone_while_another_process_has_it_open(shop: Shop) -> None:
    shop.backup()
    log = event_log(shop)
    damaged = damage_last_page(log)
    holder = sqlite3.connect(log)  # as a worker still running would hold it
    try:
        holder.execute("PRAGMA user_version").fetchone()

        refused = shop.run("repair-log", expect=1)
        backup = shop.run("backup", expect=1)

        assert "another Capsule process has it open" in one_line_error(refused)
        assert "another Capsule process has it open" in one_line_error(backup)
        assert sha256_file(log) == damaged and set_aside(shop) == []
    finally:
        holder.close()
    shop.run("repair-log", expect=0)
    assert files_with_digest(shop.home, damaged) == set_aside(shop)[:1]


def test_repair_log_leaves_a_postgresql_event_store_to_its_server(shop: Shop) -> None:
    url = "postgresql+psycopg://capsule:s3cret-pw@127.0.0.1:1/capsule"

    message = one_line_error(shop.run("repair-log", env={"CAPSULE_EVENT_STORE_URL": url}, expect=1))

    assert "postgresql+psycopg://capsule:***@127.0.0.1:1/capsule" in message
    assert "database server's to repair" in message and "s3cret-pw" not in message


@pytest.mark.parametrize("point", ["repair-log:built", "repair-log:linked", "repair-log:unlinked"])
def test_a_killed_repair_leaves_the_old_log_or_a_usable_new_one(shop: Shop, point: str) -> None:
    snapshot = shop.backup()["snapshot_id"]
    log = event_log(shop)
    damaged = damage_last_page(log)

    killed = shop.run("repair-log", env={"CAPSULE_FAULTS": point})

    assert killed.returncode == -9, killed
    assert files_with_digest(shop.home, damaged), "the damaged log must survive any kill"
    status = shop.run("status", "--json")
    if status.returncode == 0:
        assert json.loads(status.stdout)["last_snapshot"]["snapshot_id"] == snapshot
    else:
        assert status.returncode == 3 and "capsule repair-log" in one_line_error(status)
    shop.run("repair-log", expect=0)
    assert last_snapshot(shop)["snapshot_id"] == snapshot
    assert files_with_digest(shop.home, damaged)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own (root mounts a tmpfs), unmounted after the test."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        message = f"cannot mount a small file system here: {done.stderr.decode().strip()}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # no space left: that was the point
    finally:
        os.close(fd)


def test_an_event_log_on_a_full_disk_is_reported_as_a_full_disk(shop: Shop, tiny_disk: Path) -> None:
    env = {"CAPSULE_EVENT_STORE_URL": f"sqlite:///{tiny_disk / 'events.db'}"}
    shop.run("backup", env=env, expect=0)
    fill(tiny_disk)

    for args in (["backup"], ["status"]):
        proc = shop.run(*args, env=env, expect=1)
        message = one_line_error(proc)
        assert "full" in message and str(tiny_disk) in message, message
        assert "report this" not in message and "cannot be reached" not in message


def test_a_repair_on_a_full_disk_says_so_and_leaves_the_damaged_log_as_it_was(
    shop: Shop, tiny_disk: Path
) -> None:
    env = {"CAPSULE_EVENT_STORE_URL": f"sqlite:///{tiny_disk / 'events.db'}"}
    shop.run("backup", env=env, expect=0)
    damaged = damage_last_page(tiny_disk / "events.db")
    fill(tiny_disk)

    message = one_line_error(shop.run("repair-log", env=env, expect=1))

    assert "full" in message and str(tiny_disk) in message, message
    assert sha256_file(tiny_disk / "events.db") == damaged
    assert not list(tiny_disk.glob("events.db.new-*")), "a half-built log must not keep the space"
    (tiny_disk / "filler").unlink()
    shop.run("repair-log", env=env, expect=0)
    assert files_with_digest(tiny_disk, damaged)
