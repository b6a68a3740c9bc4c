"""One vocabulary for `--json`: every command names the same thing the same way, writes every time
in RFC 3339 UTC with `Z`, and has the fields the README's "JSON output" section lists; people read
local time.

The table below is the one list of fields: a command that adds, drops or renames one fails here
until the table (and the README) say so.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.integration.helpers import Shop
from tests.integration.uploads import make_uploads

SNAPSHOT = {
    "snapshot_id",
    "job_id",
    "version",
    "kind",
    "full",
    "time",
    "hostname",
    "source",
    "identity",
    "parent",
    "tags",
    "warnings",
    "totals",
}
DATABASE_SNAPSHOT = SNAPSHOT | {"files"}
SNAPSHOT_TOTALS = {
    "files",
    "bytes",
    "blobs",
    "new_blobs",
    "new_bytes",
    "stored_bytes",
    "changed_chunks",
    "read_files",
    "warnings",
    "duration_seconds",
}
SNAPSHOT_IN_STATUS = {"snapshot_id", "job_id", "kind", "source", "time", "totals"}
JOB = {
    "job_id",
    "job_type",
    "kind",
    "source",
    "snapshot_id",
    "status",
    "current_step",
    "attempt",
    "progress_done",
    "progress_total",
    "queued_behind",
    "requested_at",
    "started_at",
    "finished_at",
    "error",
    "warnings",
    "actor",
    "correlation_id",
    "last_position",
    "updated_at",
}
STATUS = {
    "repository",
    "database",
    "last_snapshot",
    "last_snapshots",
    "last_backup_warnings",
    "active_jobs",
    "recent_failures",
    "event_log_position",
    "proven",
    "last_drill",
    "space",
    "freshness",
    "problems",
    "offsite",
}
FRESHNESS = {
    "kind",
    "schedule",
    "every",
    "period_seconds",
    "allowed_seconds",
    "last_good_at",
    "age_seconds",
    "overdue",
}
PROBLEM = {"incident", "reason", "subject", "line", "job_id"}
EVENT = {"position", "recorded_at", "actor", "stream_id", "version", "type", "data"}
CHAIN = {"events", "head_position", "head", "chained_after", "chained_at", "key_id"}
VERIFY = {"ok", "snapshots", "packs", "blobs_read", "problems"}
BACKUP_OF_ALL = {"job_id", "snapshots"}
RESTORE = {
    "job_id",
    "snapshot_id",
    "kind",
    "in_place",
    "target",
    "files",
    "dirs",
    "symlinks",
    "bytes",
    "already_there",
    "special_bits_cleared",
    "restored",
    "database",
    "safety_copy",
    "notes",
}
RESTORED_FILE = {"path", "size", "sha256"}
WARNINGS = {"count", "items"}
DESTINATION = {
    "needs_credentials",
    "name",
    "kind",
    "enabled",
    "location",
    "path",
    "folder_name",
    "client_id",
    "token_uri",
    "client_secret",
    "refresh_token",
    "added_at",
    "added_by",
    "changed_at",
    "changed_by",
    "needs_consent",
    "paused_until",
    "pause_reason",
    "bandwidth",
}
DESTINATION_CHANGE = {"action", "version", "destination", "warning"}
DESTINATION_TEST = {"name", "kind", "location", "ok", "category", "message", "seconds"}
KEY = {"key_id", "type", "created_at", "hostname", "current"}
SYNCED = {
    "name",
    "ok",
    "sent",
    "sent_bytes",
    "skipped",
    "sent_by_kind",
    "deleted",
    "category",
    "message",
    "event_log",
    "event_log_written",
}

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ANY_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")
KOLKATA = timezone(timedelta(hours=5, minutes=30))


def is_time_field(name: str) -> bool:
    return name == "time" or name.endswith("_at")


def walk(value: Any, where: str = "$") -> list[tuple[str, str, Any]]:
    """(path, key, value) of every field of a JSON document."""
    found: list[tuple[str, str, Any]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            found.append((f"{where}.{key}", key, inner))
            found += walk(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for number, inner in enumerate(value):
            found += walk(inner, f"{where}[{number}]")
    return found


def check_vocabulary(command: str, doc: Any) -> None:
    for where, key, value in walk(doc):
        recorded = ".data." in where  # an event's own fields, as the log recorded them
        assert key != "id", f"`{command}` names an id `id` at {where}: say which (snapshot_id, job_id)"
        assert recorded or key not in {"snapshot", "stream", "job"}, f"`{command}`: {where}: say `..._id`"
        if is_time_field(key) and value is not None:
            assert isinstance(value, str) and RFC3339_UTC.match(value), f"`{command}` {where} = {value!r}"
        elif isinstance(value, str) and not recorded:
            assert not ANY_TIME.fullmatch(value), f"`{command}` writes a time in {where}, not a time field"
        if key == "warnings" and ".totals." not in where and value is not None and not recorded:
            assert isinstance(value, dict) and set(value) == WARNINGS, f"`{command}` {where} = {value!r}"


def run_json(shop: Shop, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> Any:
    proc = shop.run(*args, "--json", expect=expect, env=env)
    doc = json.loads(proc.stdout)
    check_vocabulary(" ".join(args), doc)
    return doc


@pytest.fixture
def images(shop: Shop) -> dict[str, str]:
    make_uploads(shop.root / "data" / "uploads" / "products")
    os.mkfifo(shop.root / "data" / "uploads" / "products" / "cat1" / "pipe")
    return {}


@pytest.mark.slow
def test_every_command_speaks_one_json_vocabulary(shop: Shop, images: dict[str, str]) -> None:
    everything = run_json(shop, "backup", "--kind", "all", expect=3)
    database = run_json(shop, "backup", "--kind", "database")
    shop.run("backup", env={"CAPSULE_DATABASE": str(shop.root / "gone.db")}, expect=1)

    assert set(everything) == BACKUP_OF_ALL
    for snapshot in [*everything["snapshots"], database]:
        wanted = DATABASE_SNAPSHOT if snapshot["kind"] == "database" else SNAPSHOT
        assert set(snapshot) == wanted
        assert set(snapshot["totals"]) == SNAPSHOT_TOTALS
    assert everything["snapshots"][1]["warnings"]["count"] == 1

    listed = run_json(shop, "snapshots")
    assert [s["snapshot_id"] for s in listed] == [
        *(s["snapshot_id"] for s in everything["snapshots"]),
        database["snapshot_id"],
    ]
    assert listed[-1] == database, "`snapshots` and `backup` describe a snapshot alike"

    jobs = run_json(shop, "jobs")
    assert [set(j) for j in jobs] == [JOB] * 3
    assert jobs[2]["snapshot_id"] == everything["snapshots"][0]["snapshot_id"]
    assert jobs[2]["warnings"]["count"] == 1

    status = run_json(shop, "status")
    assert set(status) == STATUS
    for snapshot in (status["last_snapshot"], *status["last_snapshots"].values()):
        assert set(snapshot) == SNAPSHOT_IN_STATUS
        assert set(snapshot["totals"]) <= SNAPSHOT_TOTALS
    assert status["last_snapshots"]["database"]["snapshot_id"] == database["snapshot_id"]
    assert status["last_snapshots"]["database"]["time"] == database["time"]
    assert [set(j) for j in status["recent_failures"]] == [JOB]
    assert [set(f) for f in status["freshness"]] == [FRESHNESS, FRESHNESS]
    assert status["freshness"][0]["last_good_at"] == database["time"]
    assert all(set(p) == PROBLEM for p in status["problems"])

    restored_database = run_json(shop, "restore", "latest-database", "--to", str(shop.root / "db"))
    restored_images = run_json(shop, "restore", "latest-files", "--to", str(shop.root / "images"))
    assert set(restored_database) == set(restored_images) == RESTORE
    assert (restored_database["kind"], restored_images["kind"]) == ("database", "files")
    assert restored_database["snapshot_id"] == database["snapshot_id"]
    assert [set(f) for f in restored_database["restored"]] == [RESTORED_FILE]

    events = run_json(shop, "audit")
    assert events and all(set(e) == EVENT for e in events)
    assert set(run_json(shop, "audit", "--verify")) == CHAIN
    assert set(run_json(shop, "verify")) == VERIFY


def test_a_damaged_snapshot_is_listed_by_its_snapshot_id(shop: Shop) -> None:
    made = shop.backup()["snapshot_id"]
    (shop.repository / "snapshots" / made).write_bytes(b"not a snapshot")

    [row] = run_json(shop, "snapshots")

    assert set(row) == {"snapshot_id", "damaged"} and row["snapshot_id"] == made


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(KOLKATA)


def test_people_read_local_time(shop: Shop) -> None:
    kolkata = {"TZ": "Asia/Kolkata"}
    made = shop.backup()
    [job] = run_json(shop, "jobs")

    listing = shop.run("snapshots", env=kolkata, expect=0).stdout
    jobs = shop.run("jobs", env=kolkata, expect=0).stdout
    status = shop.run("status", env=kolkata, expect=0).stdout
    audit = shop.run("audit", env=kolkata, expect=0).stdout

    taken = local(made["time"]).strftime("%Y-%m-%d %H:%M:%S")
    assert f"{made['snapshot_id'][:12]}  {taken}" in listing
    assert f"snapshot: {made['snapshot_id'][:12]} at {taken}" in status
    assert local(job["requested_at"]).strftime("%Y-%m-%d %H:%M:%S") in jobs
    assert audit.startswith(local(job["requested_at"]).strftime("%Y-%m-%d %H:%M:%S"))
    assert "UTC" not in listing + jobs + status


def test_jobs_of_a_status_none_has_says_so(shop: Shop) -> None:
    shop.backup()

    proc = shop.run("jobs", "--status", "running", expect=0)

    assert proc.stdout.strip() == "No running jobs; `capsule jobs` lists them all."


def test_the_detail_of_a_job_is_shown_whole_in_whole_words(shop: Shop) -> None:
    long = shop.root / ("a-folder-with-a-rather-long-name-" * 3) / "the-shop-database-that-is-not-there.db"
    shop.run("backup", env={"CAPSULE_DATABASE": str(long)}, expect=1)
    [job] = run_json(shop, "jobs")
    assert len(job["error"]) > 120

    lines = shop.run("jobs", expect=0).stdout.splitlines()[1:]

    first, *more = lines
    assert first.startswith(job["job_id"])
    detail = [first[88:], *(line[88:] for line in more)]
    assert all(line[:88].strip() == "" for line in more)
    assert " ".join(detail) == " ".join(job["error"].split())
    assert all(len(line) <= 80 or " " not in line for line in detail)


def test_audit_since_reads_a_time_as_people_read_it_in_local_time(shop: Shop) -> None:
    kolkata = {"TZ": "Asia/Kolkata"}
    shop.backup()
    [job] = run_json(shop, "jobs")
    requested = datetime.fromisoformat(job["requested_at"])
    shown = local(job["requested_at"]).strftime("%Y-%m-%dT%H:%M:%S")
    later = (local(job["requested_at"]) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")

    from_shown = run_json(shop, "audit", "--since", shown, env=kolkata)
    from_later = run_json(shop, "audit", "--since", later, env=kolkata)
    from_utc = run_json(shop, "audit", "--since", job["requested_at"], env=kolkata)

    assert from_shown and from_shown == from_utc
    assert from_shown[0]["recorded_at"] == job["requested_at"]
    assert all(datetime.fromisoformat(e["recorded_at"]) > requested for e in from_later)
    assert len(from_later) < len(from_shown)


@pytest.mark.slow
def test_destination_commands_speak_the_vocabulary(shop: Shop) -> None:
    folder = shop.root / "nas"
    folder.mkdir()

    added = run_json(shop, "destinations", "add", "folder", "nas", str(folder))
    listed = run_json(shop, "destinations", "list")
    tested = run_json(shop, "destinations", "test", "nas")
    synced = run_json(shop, "sync")

    assert set(added) == DESTINATION_CHANGE
    assert set(added["destination"]) == DESTINATION
    assert set(listed) == {"version", "destinations"}
    assert [set(d) for d in listed["destinations"]] == [DESTINATION]
    assert set(tested) == DESTINATION_TEST
    assert set(synced) == {"destinations"}
    assert [set(d) for d in synced["destinations"]] == [SYNCED]


def test_keys_are_listed_in_the_vocabulary_and_read_in_local_time(shop: Shop) -> None:
    [key] = run_json(shop, "key", "list")
    assert set(key) == KEY
    assert key["type"] == "key-file" and key["current"] is True

    listing = shop.run("key", "list", env={"TZ": "Asia/Kolkata"}, expect=0).stdout

    assert (
        f"* {key['key_id'][:8]}  key-file    {local(key['created_at']).strftime('%Y-%m-%d %H:%M:%S')}"
        in listing
    )
