"""Output for scripts and monitoring: `--json` results on stdout, JSON log lines on stderr."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from datetime import datetime

from tests.integration.helpers import CAPSULE, Shop, is_json_line, log_events

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TOTALS = {
    "files",
    "bytes",
    "blobs",
    "new_blobs",
    "new_bytes",
    "stored_bytes",
    "changed_chunks",
    "duration_seconds",
}


def check_manifest_fields(doc: dict[str, object], shop: Shop) -> None:
    assert doc["kind"] == "database"
    assert doc["source"] == str(shop.database.resolve())
    assert isinstance(doc["hostname"], str) and doc["hostname"]
    assert datetime.fromisoformat(str(doc["time"])).tzinfo is not None
    # Version 3: a database snapshot built on its parent's pages, whose entry has no SHA-256.
    assert doc["version"] == (2 if doc["full"] or doc["parent"] is None else 3)
    assert "entries" not in doc
    totals = doc["totals"]
    assert isinstance(totals, dict) and set(totals) >= TOTALS
    assert totals["files"] == 1
    assert totals["bytes"] == shop.database.stat().st_size


def test_backup_json_is_one_object_with_the_snapshot_id_and_figures(shop: Shop) -> None:
    first_run = shop.run("backup", "--json", expect=0)
    second_run = shop.run("backup", "--kind", "database", "--full", "--json", expect=0)

    lines = first_run.stdout.splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    second = json.loads(second_run.stdout)
    for doc in (first, second):
        assert HEX64.match(doc["snapshot_id"])
        check_manifest_fields(doc, shop)
    assert first["parent"] is None and first["full"] is False
    assert first["totals"]["new_blobs"] == first["totals"]["blobs"] > 0
    assert first["totals"]["changed_chunks"] is None
    assert second["parent"] == first["snapshot_id"] and second["full"] is True
    assert second["totals"]["new_blobs"] == 0 and second["totals"]["changed_chunks"] == 0


def test_snapshots_json_lists_every_snapshot_oldest_first_with_full_ids(shop: Shop) -> None:
    assert shop.snapshots() == []
    made = [shop.backup()["snapshot_id"] for _ in range(2)]

    rows = shop.snapshots()

    assert [r["snapshot_id"] for r in rows] == made
    times = [datetime.fromisoformat(r["time"]) for r in rows]
    assert times == sorted(times)
    for row in rows:
        assert HEX64.match(row["snapshot_id"])
        assert row["files"] == ["pos.db"]
        check_manifest_fields(row, shop)


def test_logs_are_json_lines_on_stderr_when_it_is_not_a_terminal(shop: Shop) -> None:
    proc = shop.run("backup", expect=0)

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(is_json_line(line) for line in lines), proc.stderr
    events = log_events(proc.stderr)
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    backed_up = [e for e in events if e["event"] == "database backed up"]
    assert len(backed_up) == 1 and backed_up[0]["level"] == "info"
    # The human result goes to stdout, not into the log stream.
    assert proc.stdout.startswith("Snapshot ")


def test_logs_are_readable_text_on_a_terminal_when_asked_for(shop: Shop) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [*CAPSULE, "backup", "--log-format", "console"],
            cwd=shop.root,
            env=shop.env(),
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        received = b""
        while True:
            try:
                block = os.read(controller, 65536)
            except OSError:
                break
            if not block:
                break
            received += block
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0
    text = received.decode(errors="replace")
    assert "database backed up" in text
    assert not any(is_json_line(line.strip()) for line in text.splitlines() if "backed up" in line)
    assert "Backing up" not in text  # no progress bar for the log lines to run into
