"""A repository with files and database snapshots, for the prune engine's tests.

Everything is real: a folder repository, real backups of a real folder and a real SQLite database,
each prune phase run on a repository opened afresh, as a new process would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.restore import restore_files
from capsule.adapters.files.tree import iter_entries
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import PRUNE, lock_owners, locked, owners_gone
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.prune import (
    KEEP_YOUNGER_THAN,
    PrunePlan,
    PruneResult,
    Repacked,
    finish_prune,
    plan_prune,
    repack,
    rewrite_index,
)
from capsule.adapters.repository.rebuild import read_pack_header
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.repository.verify import verify
from capsule.adapters.sqlite.backup import backup_database

KiB = 1024
HOURS = 3600.0


class Lab:
    """One repository, the folder and database it backs up, and what each snapshot must restore."""

    def __init__(self, root: Path, pack_size: int = 256 * KiB, seed: int = 1) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.uploads.mkdir(parents=True)
        self.database = root / "pos.db"
        self.staging = root / "staging"
        self.repository = root / "repo"
        self.key = root / "key"
        Repository.init(LocalBackend(self.repository), self.key, pack_size=pack_size)
        self.rng = random.Random(seed)
        self.time = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
        self.expected: dict[str, dict[str, str]] = {}
        """Snapshot id -> {path: SHA-256} of what it must restore."""
        conn = sqlite3.connect(self.database)
        conn.execute("CREATE TABLE sales (id INTEGER PRIMARY KEY, body BLOB)")
        conn.commit()
        conn.close()

    def copy(self, root: Path) -> Lab:
        """The same lab (repository, sources, expectations) under a new root."""
        shutil.copytree(self.root, root, symlinks=True)
        twin = copy.copy(self)
        twin.root, twin.uploads, twin.database = root, root / "uploads", root / "pos.db"
        twin.staging, twin.repository, twin.key = root / "staging", root / "repo", root / "key"
        twin.expected = dict(self.expected)
        twin.rng = random.Random(self.rng.random())
        return twin

    def open(self) -> Repository:
        return Repository.open(LocalBackend(self.repository), self.key)

    # ---- sources -------------------------------------------------------------------------
    def write(self, relative: str, size: int) -> None:
        path = self.uploads / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rng.randbytes(size))

    def remove(self, relative: str) -> None:
        (self.uploads / relative).unlink()

    def sell(self, rows: int, delete_below: int | None = None) -> None:
        conn = sqlite3.connect(self.database)
        if delete_below is not None:
            conn.execute("DELETE FROM sales WHERE id < ?", (delete_below,))
        conn.executemany(
            "INSERT INTO sales (body) VALUES (?)", [(self.rng.randbytes(900),) for _ in range(rows)]
        )
        conn.commit()
        conn.close()

    # ---- snapshots -----------------------------------------------------------------------
    def _tick(self) -> datetime:
        self.time += timedelta(minutes=1)
        return self.time

    def backup_files(self, repo: Repository | None = None, folder: Path | None = None) -> str:
        folder = folder or self.uploads
        result = backup_files(repo or self.open(), folder, now=self._tick())
        self.expected[result.snapshot_id] = {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*")
            if p.is_file()
        }
        return result.snapshot_id

    def backup_database(self, repo: Repository | None = None) -> str:
        result = backup_database(
            repo or self.open(), self.database, self.staging, now=self._tick(), workers=0
        )
        entry = result.manifest.entries[0]
        self.expected[result.snapshot_id] = {entry.path: entry.sha256}
        return result.snapshot_id

    def forget(self, snapshot_id: str) -> None:
        LocalBackend(self.repository).remove("snapshots", snapshot_id)
        del self.expected[snapshot_id]

    def one_file_only_a_forgotten_snapshot_held(self) -> tuple[Repository, bytes]:
        """b.bin, held only by a forgotten snapshot whose packs are old, and a backup that has
        loaded the index already (it could still name b.bin's blob): returns that backup's open
        repository and b.bin's bytes, for a backup that brings b.bin back during a prune."""
        self.write("a.bin", 40 * KiB)
        self.write("b.bin", 90 * KiB)
        b_bytes = (self.uploads / "b.bin").read_bytes()
        first = self.backup_files()
        self.remove("b.bin")
        self.backup_files()
        self.forget(first)
        self.age()
        backup = self.open()
        backup.ensure_index()
        return backup, b_bytes

    # ---- the repository on disk ----------------------------------------------------------
    def pack_files(self) -> list[Path]:
        return sorted(p for p in (self.repository / "data").glob("*/*") if not p.name.startswith("."))

    def packs(self) -> set[str]:
        return {p.name for p in self.pack_files()}

    def data_packs(self) -> set[str]:
        """The packs holding data blobs (a backup writes its list blobs into packs of their own)."""
        repo = self.open()
        return {p for p in self.packs() if any(b.blob_type == BLOB_DATA for b in read_pack_header(repo, p))}

    def pack_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.pack_files())

    def age(self, seconds: float = 3 * HOURS) -> None:
        """Make every pack look written `seconds` ago, as after a few hours of a shop's day."""
        when = time.time() - seconds
        for p in self.pack_files():
            os.utime(p, (when, when))

    def check(self, out: Path) -> None:
        """verify --read-data is clean and every kept snapshot restores byte-identical."""
        repo = self.open()
        report = verify(repo, read_data=True)
        assert report.ok, [p.as_dict() for p in report.problems]
        assert report.snapshots == len(self.expected)
        for number, (sid, expected) in enumerate(sorted(self.expected.items())):
            to = out / f"restore-{number}"
            manifest = repo.load_snapshot(sid)
            if manifest.kind == "files":
                restore_files(repo, manifest, to, workers=0)
                got = {
                    e.path: hashlib.sha256((to / e.path).read_bytes()).hexdigest()
                    for e in iter_entries(repo, manifest)
                    if e.type == "file"
                }
            else:
                restored = restore_snapshot(repo, manifest, to, workers=0)
                got = {manifest.entries[0].path: hashlib.sha256(restored[0].path.read_bytes()).hexdigest()}
            assert got == expected, sid


def roundtrip_plan(plan: PrunePlan) -> PrunePlan:
    return PrunePlan.from_json(json.loads(json.dumps(plan.to_json())))


def prune(
    lab: Lab,
    *,
    percent: int = 10,
    keep_younger_than: float = KEEP_YOUNGER_THAN,
    plan: PrunePlan | None = None,
    repacked: Repacked | None = None,
) -> tuple[PrunePlan, PruneResult]:
    """Every phase as the job runs them: each on a repository opened afresh, under the prune lock,
    the plan and the repack's result passed on as JSON. A plan (and repack) given are resumed."""
    backend = LocalBackend(lab.repository)
    with locked(backend, PRUNE):
        if plan is None:
            plan = roundtrip_plan(
                plan_prune(lab.open(), repack_unused_percent=percent, keep_younger_than=keep_younger_than)
            )
        if repacked is None:
            repacked = Repacked.from_json(json.loads(json.dumps(repack(lab.open(), plan).to_json())))
        rewrite_index(lab.open(), plan, repacked)
        owners = lock_owners(backend)
    deadline = time.monotonic() + 60
    while not owners_gone(backend, owners):
        assert time.monotonic() < deadline, owners
        time.sleep(0.05)
    with locked(backend, PRUNE):
        result = finish_prune(lab.open(), plan, repacked)
    return plan, PruneResult.from_json(json.loads(json.dumps(result.to_json())))
