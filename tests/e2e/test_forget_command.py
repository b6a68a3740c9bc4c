"""`capsule forget` and `capsule tag` as a shop owner runs them, on real backups: what they print,
that a dry run changes nothing, that the audit log names the rule and the actor of every
forgetting, that pins hold, and that neither a kill -9 between the log and the repository nor a
second process forgetting at the same time leaves anything wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_json_vocabulary import check_vocabulary
from tests.integration.helpers import Shop, copy_shop, made_once, one_line_error

JUDGED = {"snapshot_id", "kind", "source", "time", "tags", "action", "reasons"}
REPORT = {"run_id", "timezone", "dry_run", "snapshots", "kept", "forgotten", "completed", "meanwhile"}
TAGGED = {"snapshot_id", "tags", "added", "removed", "pinned"}


def json_of(shop: Shop, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> Any:
    doc = json.loads(shop.run(*args, "--json", expect=expect, env=env).stdout)
    check_vocabulary(" ".join(args), doc)
    return doc


def listed(shop: Shop) -> list[str]:
    return [s["snapshot_id"] for s in shop.snapshots()]


def on_disk(shop: Shop) -> set[str]:
    return {p.name for p in (shop.repository / "snapshots").iterdir()}


def forgettings(shop: Shop) -> list[dict[str, Any]]:
    return [e for e in json_of(shop, "audit") if e["type"] == "SnapshotForgotten"]


@pytest.fixture
def four(shop: Shop, shared_folder: Path, initialised_template: Shop) -> list[str]:
    """Four database backups, oldest first, and a policy that keeps the two newest: made once by
    the run's first test to ask (five `capsule` processes), then copied into each test's shop."""

    def make(root: Path) -> None:
        made = copy_shop(initialised_template, root)
        ids = [made.backup()["snapshot_id"] for _ in range(4)]
        made.run("settings", "set", "retention.database.keep-last", "2", expect=0)
        (root / "four.json").write_text(json.dumps(ids))

    template = made_once(shared_folder / "forget-four", make)
    shutil.rmtree(shop.root)
    shutil.copytree(template, shop.root, symlinks=True)
    ids: list[str] = json.loads((shop.root / "four.json").read_text())
    return ids


@pytest.mark.slow
def test_a_dry_run_says_what_would_go_and_why_and_changes_nothing(shop: Shop, four: list[str]) -> None:
    before = on_disk(shop)
    events = len(json_of(shop, "audit"))
    text = shop.run("forget", "--dry-run", expect=0).stdout
    assert f"  keep    {four[3][:12]}" in text and "last, hourly" in text
    assert f"  forget  {four[0][:12]}" in text and "no rule keeps it: hourly" in text
    assert "Dry run: would keep 2, would forget 2; nothing was changed." in text
    doc = json_of(shop, "forget", "--dry-run")
    assert set(doc) == REPORT and all(set(j) == JUDGED for j in doc["snapshots"])
    assert [j["action"] for j in doc["snapshots"]] == ["keep", "keep", "forget", "forget"]
    assert sorted(doc["forgotten"]) == sorted(four[:2])
    assert on_disk(shop) == before and len(json_of(shop, "audit")) == events


@pytest.mark.slow
def test_forget_deletes_what_no_rule_keeps_and_the_audit_log_names_the_rule_and_actor(
    shop: Shop, four: list[str]
) -> None:
    doc = json_of(shop, "forget")
    assert sorted(doc["forgotten"]) == sorted(four[:2]) and doc["kept"] == 2
    assert sorted(listed(shop)) == sorted(four[2:])
    events = forgettings(shop)
    assert sorted(e["data"]["snapshot_id"] for e in events) == sorted(four[:2])
    for event in events:
        assert event["actor"].startswith("person:")
        assert event["stream_id"] == f"snapshot-{event['data']['snapshot_id']}"
        assert event["data"]["reason"] == "policy"
        assert event["data"]["rule"].startswith("hourly ") and "keep-last 2" in event["data"]["rule"]
        assert event["data"]["policy"]["keep-last"] == 2
    audit = shop.run("audit", expect=0).stdout
    lines = [line for line in audit.splitlines() if "SnapshotForgotten" in line]
    assert len(lines) == 2
    assert all("person:" in line and "reason=policy, rule=hourly " in line for line in lines)
    again = shop.run("forget", expect=0).stdout
    assert "Kept 2, forgotten 0." in again


@pytest.mark.slow
def test_a_pinned_snapshot_stays_and_by_hand_needs_force(shop: Shop, four: list[str]) -> None:
    pinned = json_of(shop, "tag", four[0][:8], "--add", "keep")
    assert set(pinned) == TAGGED and pinned["pinned"] is True and pinned["added"] == ["keep"]
    text = shop.run("forget", expect=0).stdout
    assert f"  keep    {four[0][:12]}" in text and "pinned" in text
    assert sorted(listed(shop)) == sorted([four[0], *four[2:]])
    refused = shop.run("forget", four[0][:8])
    assert refused.returncode == 1
    assert "is pinned" in one_line_error(refused) and "--force" in one_line_error(refused)
    assert four[0] in listed(shop)
    forced = json_of(shop, "forget", four[0][:8], "--force")
    assert forced["forgotten"] == [four[0]] and forced["snapshots"][0]["reasons"] == ["by hand (forced)"]
    assert four[0] not in listed(shop)
    (event,) = [e for e in forgettings(shop) if e["data"]["snapshot_id"] == four[0]]
    assert event["data"]["reason"] == "by hand" and event["data"]["forced"] is True


@pytest.mark.slow
def test_the_last_snapshot_goes_by_hand_only_with_force(shop: Shop) -> None:
    only = shop.backup()["snapshot_id"]
    refused = shop.run("forget", "latest-database")
    assert refused.returncode == 1
    assert "is the last database snapshot of" in one_line_error(refused)
    assert listed(shop) == [only]
    usage = shop.run("forget", "--force")
    assert usage.returncode == 2 and "--force applies to snapshots named by hand" in usage.stderr
    shop.run("forget", "latest-database", "--force", expect=0)
    assert listed(shop) == []


@pytest.mark.slow
def test_a_forget_killed_between_the_log_and_the_repository_is_finished_by_the_next(
    shop: Shop, four: list[str]
) -> None:
    killed = shop.run("forget", env={"CAPSULE_FAULTS": "forget:recorded"})
    assert killed.returncode == -signal.SIGKILL
    recorded = sorted(e["data"]["snapshot_id"] for e in forgettings(shop))
    assert recorded == sorted(four[:2]), "every forgetting is recorded in one transaction"
    assert set(recorded) <= on_disk(shop), "killed before the manifests were deleted"
    shop.run("unlock", expect=0)  # the killed process's lock
    doc = json_of(shop, "forget")
    assert sorted(doc["completed"]) == recorded and doc["forgotten"] == []
    assert not set(recorded) & {j["snapshot_id"] for j in doc["snapshots"]}
    assert sorted(listed(shop)) == sorted(four[2:])
    assert sorted(e["data"]["snapshot_id"] for e in forgettings(shop)) == sorted(four[:2])


@pytest.mark.slow
def test_two_processes_forgetting_at_once_record_each_snapshot_once(shop: Shop, four: list[str]) -> None:
    release = shop.root / "release-the-first"  # held until the second has recorded its own
    first = shop.popen("forget", "--json", env={"CAPSULE_FAULTS": f"forget:judged@until={release}"})
    deadline = time.monotonic() + 30
    while not list((shop.repository / "locks").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # judged and paused: it holds its verdicts, not yet recorded
    try:
        second = json_of(shop, "forget")
    finally:
        release.touch()
    assert sorted(second["forgotten"]) == sorted(four[:2])
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    late = json.loads(out)
    assert late["forgotten"] == [] and sorted(late["meanwhile"]) == sorted(four[:2])
    assert sorted(e["data"]["snapshot_id"] for e in forgettings(shop)) == sorted(four[:2])
    assert sorted(listed(shop)) == sorted(four[2:])


@pytest.mark.slow
def test_replay_rebuilds_the_same_rows_after_forgetting_and_tagging(shop: Shop, four: list[str]) -> None:
    shop.run("tag", four[1], "--add", "keep", "--add", "year-end", expect=0)
    shop.run("forget", four[3][:8], expect=0)
    status = json_of(shop, "status")
    assert status["last_snapshots"]["database"]["snapshot_id"] == four[2], "the forgotten newest is gone"
    shop.run("replay", expect=0)
    assert json_of(shop, "status")["last_snapshots"] == status["last_snapshots"]
    kept = json_of(shop, "forget", "--dry-run")
    assert {j["snapshot_id"]: j["tags"] for j in kept["snapshots"]}[four[1]] == ["keep", "year-end"]
    removed = shop.run("tag", four[1], "--remove", "keep", expect=0).stdout
    assert "removed keep; its tags: year-end." in removed


@pytest.mark.slow  # five backups and a prune, each a process of its own
def test_forget_with_prune_gives_the_space_back_in_one_run(shop: Shop) -> None:
    ids = []
    for n in range(4):
        with sqlite3.connect(shop.database) as db:  # pages the next backup no longer holds
            db.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
            db.execute("DELETE FROM filler")
            db.execute("INSERT INTO filler VALUES (randomblob(?))", (400_000 + n,))
        ids.append(shop.backup()["snapshot_id"])
    shop.run("settings", "set", "retention.database.keep-last", "2", expect=0)
    when = time.time() - 3 * 3600  # past the two hours in which a prune leaves a pack alone
    for pack in (shop.repository / "data").rglob("*"):
        os.utime(pack, (when, when))
    refused = shop.run("forget", "--prune", "--dry-run", expect=2).stderr
    assert "--prune and --dry-run do not go together" in refused

    doc = json_of(shop, "forget", "--prune")

    assert set(doc) == {"forget", "prune"} and set(doc["forget"]) == REPORT
    assert sorted(doc["forget"]["forgotten"]) == sorted(ids[:2])
    pruned = doc["prune"]
    assert pruned["job_id"] and pruned["dry_run"] is False
    assert pruned["bytes_freed"] > 400_000 and pruned["bytes_after"] < pruned["bytes_before"]
    assert sorted(listed(shop)) == sorted(ids[2:])
    (job,) = [j for j in json_of(shop, "jobs") if j["job_type"] == "prune"]
    assert job["status"] == "completed" and job["job_id"] == pruned["job_id"]
    assert json_of(shop, "verify", "--read-data")["ok"] is True
