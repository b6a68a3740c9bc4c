"""`capsule audit --verify`: the event log checked against its chain, as a shop owner or auditor runs it."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.integration.helpers import Shop, one_line_error

LEGACY_LOG = Path(__file__).parent.parent / "integration" / "data" / "event-log-before-chain.sql"


def events_db(shop: Shop) -> Path:
    return shop.home / "events.db"


def test_audit_verify_counts_the_events_of_an_untouched_log(shop: Shop) -> None:
    shop.run("backup", expect=0)

    out = shop.run("audit", "--verify", expect=0).stdout
    report = json.loads(shop.run("audit", "--verify", "--json", expect=0).stdout)

    assert report["events"] >= 6
    assert out.startswith(f"Checked {report['events']} events: each matches its seal")
    assert f"Head: position {report['head_position']}, chain {report['head']}" in out
    key = shop.home / "event-log.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = bytes.fromhex(key.read_text().splitlines()[-1])
    assert secret not in events_db(shop).read_bytes()
    assert shop.run("replay", expect=0).stdout.startswith("Replayed ")


def test_audit_verify_names_the_event_whose_actor_was_rewritten_behind_the_dropped_trigger(
    shop: Shop,
) -> None:
    shop.run("backup", expect=0)
    conn = sqlite3.connect(events_db(shop))
    try:
        conn.execute("DROP TRIGGER events_refuse_update")
        forged = "json_set(metadata, '$.actor', 'person:nobody@till')"
        conn.execute(f"UPDATE events SET metadata = {forged} WHERE position = 1")
        conn.commit()
        stream = conn.execute("SELECT stream_id FROM events WHERE position = 1").fetchone()[0]
    finally:
        conn.close()
    assert "person:nobody@till" in shop.run("audit", expect=0).stdout

    failed = shop.run("audit", "--verify", expect=3)

    message = one_line_error(failed)
    assert "position 1" in message and stream in message and "BackupRequested" in message
    assert "changed" in message


def test_audit_verify_checks_the_whole_log_only(shop: Shop) -> None:
    refused = shop.run("audit", "--verify", "--job", "x", expect=2)
    assert "--verify checks the whole log" in refused.stderr


def test_a_log_written_before_the_chain_is_chained_when_opened_and_verifies(shop: Shop) -> None:
    events_db(shop).unlink(missing_ok=True)
    for side in ("-wal", "-shm"):
        Path(f"{events_db(shop)}{side}").unlink(missing_ok=True)
    conn = sqlite3.connect(events_db(shop))
    try:
        conn.executescript(LEGACY_LOG.read_text())
        before = conn.execute("SELECT * FROM events ORDER BY position").fetchall()
    finally:
        conn.close()

    out = shop.run("audit", "--verify", expect=0).stdout
    shop.run("backup", expect=0)
    after = json.loads(shop.run("audit", "--verify", "--json", expect=0).stdout)

    assert out.startswith("Checked 10 events")
    assert "the events up to position 10 were written before and sealed then" in out
    assert after["events"] > 10 and after["chained_after"] == 10
    conn = sqlite3.connect(events_db(shop))
    try:
        assert (
            conn.execute("SELECT * FROM events WHERE position <= 10 ORDER BY position").fetchall() == before
        )
    finally:
        conn.close()
    assert shop.run("replay", expect=0).stdout.startswith("Replayed ")
    jobs = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    assert len(jobs) == 3


@pytest.mark.slow
def test_without_the_event_log_key_backups_stop_at_once_and_the_log_stays_readable(shop: Shop) -> None:
    shop.run("backup", expect=0)
    key = shop.home / "event-log.key"
    kept = key.read_bytes()
    key.unlink()
    jobs_before = json.loads(shop.run("jobs", "--json", expect=0).stdout)

    refused = shop.run("backup", expect=1, timeout=60)
    worker = shop.run("worker", "--until-idle", expect=1, timeout=60)

    message = one_line_error(refused)
    assert str(key) in message and "missing" in message
    assert str(key) in one_line_error(worker)
    assert not key.exists()
    assert json.loads(shop.run("jobs", "--json", expect=0).stdout) == jobs_before
    key.write_bytes(kept)
    shop.run("backup", expect=0)
    assert json.loads(shop.run("audit", "--verify", "--json", expect=0).stdout)["events"] > 6
