"""Backups and prunes side by side, in two processes, while snapshots are forgotten.

The time scale is shrunk: backups adopt unindexed packs written within the last second and prune
condemns only packs older than three (the same rule as the hour and two hours of a shop's day).
Afterwards `verify --read-data` is clean and every snapshot not forgotten restores byte-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.prune_lab import KiB, Lab

BACKUPS = """
import hashlib, json, random, sqlite3, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from capsule.adapters.files.backup import backup_files
from capsule.adapters.repository import rebuild
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import locked
from capsule.adapters.repository.repo import Repository
from capsule.adapters.sqlite.backup import backup_database

rebuild.ADOPT_WITHIN = 1.0
repository, key, uploads, database, staging, out, progress = map(Path, sys.argv[1:8])
rounds = int(sys.argv[8])
PACE = 8


def _prune_rounds(path):
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


rng = random.Random(7)
now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
for n in range(rounds):
    now += timedelta(minutes=1)
    (uploads / f"img-{n}.jpg").write_bytes(rng.randbytes(rng.randrange(20_000, 120_000)))
    if n >= 3:
        (uploads / f"img-{n - 3}.jpg").unlink()
    conn = sqlite3.connect(database)
    conn.execute("DELETE FROM sales WHERE id < ?", (n * 40,))
    conn.executemany("INSERT INTO sales (body) VALUES (?)", [(rng.randbytes(900),) for _ in range(60)])
    conn.commit()
    conn.close()
    backend = LocalBackend(repository)
    with locked(backend, "backup", timeout=60):
        repo = Repository.open(backend, key)
        if n % 2:
            result = backup_database(repo, database, staging, now=now, workers=0)
            entry = result.manifest.entries[0]
            expected = {entry.path: entry.sha256}
        else:
            result = backup_files(repo, uploads, now=now)
            expected = {
                str(p.relative_to(uploads)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in uploads.rglob("*") if p.is_file()
            }
    with open(out, "a") as f:
        f.write(json.dumps({"snapshot": result.snapshot_id, "expected": expected}) + "\\n")
    # Paced by the prunes: one round for every PACE backups at least, however busy the machine, so
    # that prunes really run between backups (a prune starved by other work once ran twice in all).
    if (n + 1) % PACE == 0 and n + 1 < rounds:
        waited = 0.0
        while _prune_rounds(progress) < (n + 1) // PACE and waited < 60:
            time.sleep(0.05)
            waited += 0.05
print("backups done", flush=True)
"""

PRUNES = """
import json, random, sys, time
from pathlib import Path
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import PRUNE, locked, lock_owners, owners_gone
from capsule.adapters.repository.prune import finish_prune, plan_prune, repack, rewrite_index
from capsule.adapters.repository.repo import Repository

repository, key, done_flag, out, progress = map(Path, sys.argv[1:6])
backend = LocalBackend(repository)
rng = random.Random(11)
forgotten, deleted, rescued, rounds = [], 0, 0, 0

def fresh():
    return Repository.open(backend, key)

while True:
    last = done_flag.exists()
    if last:
        time.sleep(3.5)  # the last round sees every pack past the young window, however slow the machine
    names = sorted(backend.list("snapshots"), key=lambda n: backend.stat("snapshots", n).modified)
    for name in names[:-2]:
        if rng.random() < 0.5:
            backend.remove("snapshots", name)
            forgotten.append(name)
    with locked(backend, PRUNE, timeout=60):
        plan = plan_prune(fresh(), keep_younger_than=3.0)
        repacked = repack(fresh(), plan)
        rewrite_index(fresh(), plan, repacked)
        owners = lock_owners(backend)
    while not owners_gone(backend, owners):
        time.sleep(0.02)
    with locked(backend, PRUNE, timeout=60):
        result = finish_prune(fresh(), plan, repacked)
    deleted += len(result.deleted)
    rescued += len(result.rescued)
    rounds += 1
    progress.write_text(str(rounds))
    if last:
        break
    time.sleep(0.3)
out.write_text(json.dumps({"forgotten": forgotten, "deleted": deleted, "rescued": rescued, "rounds": rounds}))
print("prunes done", flush=True)
"""


@pytest.mark.slow
def test_backups_and_prunes_side_by_side_keep_every_snapshot_whole(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", pack_size=96 * KiB)
    lab.sell(200)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSULE_")}
    made, flag, summary = tmp_path / "made.jsonl", tmp_path / "backups-done", tmp_path / "prunes.json"
    progress = tmp_path / "prune-rounds"
    logs = [tmp_path / "backups.log", tmp_path / "prunes.log"]
    with open(logs[0], "w") as backups_log, open(logs[1], "w") as prunes_log:
        backups = subprocess.Popen(
            [sys.executable, "-c", BACKUPS, *map(str, (lab.repository, lab.key, lab.uploads, lab.database)),
             str(lab.staging), str(made), str(progress), "24"],
            stdout=backups_log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        prunes = subprocess.Popen(
            [sys.executable, "-c", PRUNES, str(lab.repository), str(lab.key), str(flag), str(summary),
             str(progress)],
            stdout=prunes_log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        assert backups.wait(timeout=120) == 0, logs[0].read_text()
        flag.write_text("")
        assert prunes.wait(timeout=120) == 0, logs[1].read_text()
    finally:
        for proc in (backups, prunes):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = json.loads(summary.read_text())
    lab.expected = {}
    for line in made.read_text().splitlines():
        row = json.loads(line)
        lab.expected[row["snapshot"]] = row["expected"]
    for sid in report["forgotten"]:
        lab.expected.pop(sid)
    print(report["rounds"], "prunes deleted", report["deleted"], "packs, rescued", report["rescued"])
    assert report["rounds"] >= 3 and report["deleted"] > 0, report
    assert len(lab.expected) >= 2
    lab.check(tmp_path / "out")
