"""Whatever happens to the database between backups, every snapshot restores to what was backed up."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import string
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from capsule.adapters.repository import index as index_module
from capsule.adapters.repository.chunks import DIRECT_LIMIT
from capsule.adapters.repository.restore import restore_snapshot
from capsule.adapters.sqlite.backup import backup_database
from tests.unit.support import new_repository, reopen

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)
BACKUP_EVERY = 4  # operations; a hypothesis-chosen "backup" operation also takes one
# Backups and restores here seal and open their blobs in one worker process, as they do in
# several: each call starts its own pool, and starting a process per core for every backup and restore of
# every example took most of this test's time. That several workers give the same bytes as one
# is test_worker_modes.py's to show.
WORKERS = 1


def _payload(kind: str, seed: int, size: int) -> bytes | str:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "repeat":
        return (rng.randbytes(7) * (size // 7 + 1))[:size]
    alphabet = string.ascii_letters + string.digits + " éü€;\n"
    return "".join(rng.choice(alphabet) for _ in range(size))


sizes = st.one_of(st.integers(0, 100), st.integers(100, 3000), st.integers(3000, 30_000))
payloads = st.builds(_payload, st.sampled_from(["random", "repeat", "text"]), st.integers(0, 2**32), sizes)

operations = st.one_of(
    st.tuples(st.just("insert"), st.lists(payloads, min_size=1, max_size=6)),
    # Enough rows to pass DIRECT_LIMIT chunks, so the manifest lists its blobs through list blobs.
    st.tuples(st.just("bulk"), st.integers(20, 80), st.integers(2000, 9000), st.integers(0, 2**32)),
    st.tuples(st.just("update"), st.integers(0, 10_000), payloads),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 30)),
    st.just(("vacuum",)),
    st.just(("create_index",)),
    st.just(("drop_index",)),
    st.just(("checkpoint",)),
    st.just(("backup",)),
)


def _row_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def apply(conn: sqlite3.Connection, op: tuple) -> None:
    name = op[0]
    if name == "insert":
        for p in op[1]:
            if isinstance(p, str):
                conn.execute("INSERT INTO items(name, data, qty) VALUES (?, NULL, ?)", (p, len(p)))
            else:
                conn.execute("INSERT INTO items(name, data, qty) VALUES (NULL, ?, ?)", (p, len(p)))
    elif name == "bulk":
        _, rows, size, seed = op
        rng = random.Random(seed)
        with conn:
            conn.executemany(
                "INSERT INTO items(name, data, qty) VALUES (?, ?, ?)",
                [(f"bulk-{seed}-{i}", rng.randbytes(size), i) for i in range(rows)],
            )
    elif name == "update":
        count = _row_count(conn)
        if count:
            column = "name" if isinstance(op[2], str) else "data"
            conn.execute(
                f"UPDATE items SET {column} = ?, qty = qty + 1 "
                "WHERE id = (SELECT id FROM items ORDER BY id LIMIT 1 OFFSET ?)",
                (op[2], op[1] % count),
            )
    elif name == "delete":
        count = _row_count(conn)
        if count:
            conn.execute(
                "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT ? OFFSET ?)",
                (op[2], op[1] % count),
            )
    elif name == "vacuum":
        conn.execute("VACUUM")
    elif name == "create_index":
        conn.execute("CREATE INDEX IF NOT EXISTS items_by_name ON items(name, qty)")
    elif name == "drop_index":
        conn.execute("DROP INDEX IF EXISTS items_by_name")
    elif name == "checkpoint":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def dump(conn: sqlite3.Connection) -> list[str]:
    return list(conn.iterdump())


@dataclass
class Taken:
    snapshot_id: str
    dump: list[str]


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    page_size=st.sampled_from([1024, 4096, 8192]),
    journal_mode=st.sampled_from(["wal", "delete"]),
    ops=st.lists(operations, min_size=4, max_size=16),
)
def test_any_sequence_of_edits_restores_exactly_from_every_snapshot(page_size, journal_mode, ops):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo, key_file = new_repository(root, pack_size=256 * 1024)
        db = root / "live" / "pos.db"
        db.parent.mkdir()
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size={page_size}")
            assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
            conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, data BLOB, qty INTEGER)")

            taken: list[Taken] = []

            def take_backup() -> None:
                result = backup_database(
                    repo, db, root / "staging", now=T0 + timedelta(minutes=len(taken)), workers=WORKERS
                )
                assert result.manifest.parent == (taken[-1].snapshot_id if taken else None)
                taken.append(Taken(result.snapshot_id, dump(conn)))

            since_backup = 0
            for op in ops:
                if op[0] == "backup":
                    take_backup()
                    since_backup = 0
                    continue
                apply(conn, op)
                since_backup += 1
                if since_backup == BACKUP_EVERY:
                    take_backup()
                    since_backup = 0
            take_backup()
        finally:
            conn.close()

        event(f"{len(taken)} snapshots" if len(taken) < 3 else "3 or more snapshots")
        fresh = reopen(repo, key_file)
        assert sorted(fresh.backend.list("snapshots")) == sorted(t.snapshot_id for t in taken)
        for n, t in enumerate(taken):
            manifest = fresh.load_snapshot(t.snapshot_id)
            (entry,) = manifest.entries
            assert entry.sqlite is not None
            assert entry.sqlite.page_size == page_size
            assert entry.sqlite.journal_mode == journal_mode
            chunk = max(page_size, 4096)
            assert bool(entry.blob_lists) == (entry.size > DIRECT_LIMIT * chunk)
            assert bool(entry.blobs) != bool(entry.blob_lists)
            event("snapshot listed through list blobs" if entry.blob_lists else "snapshot lists blobs")

            target = root / f"restore-{n}"
            (restored,) = restore_snapshot(fresh, manifest, target, workers=WORKERS)
            assert restored.path == target / "pos.db"
            content = restored.path.read_bytes()
            assert len(content) == entry.size
            assert hashlib.sha256(content).hexdigest() == restored.sha256
            if entry.sha256 is None:  # built on its parent: checked by its page ids as restored
                event("snapshot without the file's SHA-256")
            else:
                assert restored.sha256 == entry.sha256

            check = sqlite3.connect(f"file:{restored.path}?immutable=1", uri=True)
            try:
                assert int(check.execute("PRAGMA page_size").fetchone()[0]) == page_size
                assert dump(check) == t.dump
            finally:
                check.close()


def _small_database(path: Path, journal_mode: str = "wal") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE sales(id INTEGER PRIMARY KEY, item TEXT, cents INTEGER, receipt BLOB)")
    rng = random.Random(5)
    with conn:
        conn.executemany(
            "INSERT INTO sales(item, cents, receipt) VALUES (?, ?, ?)",
            [(f"item {i}", i * 10, rng.randbytes(300)) for i in range(200)],
        )
    return conn


def test_backup_of_an_unchanged_database_stores_no_new_blobs(tmp_path):
    repo, _ = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    conn = _small_database(db, "delete")
    conn.close()
    first = backup_database(repo, db, tmp_path / "staging", now=T0)
    second = backup_database(repo, db, tmp_path / "staging", now=T0 + timedelta(hours=1))
    assert first.manifest.totals.new_blobs > 0
    assert second.manifest.totals.new_blobs == 0
    assert second.manifest.totals.changed_chunks == 0
    assert second.manifest.entries[0].blobs == first.manifest.entries[0].blobs
    assert second.manifest.parent == first.snapshot_id


def test_rows_still_in_the_wal_are_in_the_snapshot(tmp_path):
    repo, key_file = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    conn = _small_database(db)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("INSERT INTO sales(item, cents) VALUES ('only in the wal', 999)")
        assert Path(f"{db}-wal").stat().st_size > 0
        result = backup_database(repo, db, tmp_path / "staging", now=T0)
        expected = dump(conn)
    finally:
        conn.close()
    (restored,) = restore_snapshot(reopen(repo, key_file), result.manifest, tmp_path / "out")
    check = sqlite3.connect(f"file:{restored.path}?immutable=1", uri=True)
    try:
        assert dump(check) == expected
        assert check.execute("SELECT cents FROM sales WHERE item = 'only in the wal'").fetchone() == (999,)
    finally:
        check.close()


def _lose_pack_then_back_up_in_full(root: Path):
    """Back up, lose the only pack, take a full backup, each step as a separate run would."""
    first, key_file = new_repository(root)
    db = root / "pos.db"
    _small_database(db, "delete").close()
    backup_database(first, db, root / "staging", now=T0)
    (old_index,) = first.backend.list("index")
    (lost,) = first.backend.list("data")
    first.backend.remove("data", lost)

    repo = reopen(first, key_file)
    full = backup_database(repo, db, root / "staging", full=True, now=T0 + timedelta(hours=2))
    (new_index,) = (n for n in repo.backend.list("index") if n != old_index)
    return repo, key_file, full, old_index, new_index


def test_full_backup_stores_again_the_blobs_of_a_lost_pack(tmp_path):
    repo, _, full, _, _ = _lose_pack_then_back_up_in_full(tmp_path)
    assert full.manifest.full is True
    assert full.manifest.totals.new_blobs == full.manifest.totals.blobs
    # The process that took the full backup restores it.
    (restored,) = restore_snapshot(repo, full.manifest, tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == full.manifest.entries[0].sha256


def test_full_backup_after_a_lost_pack_restores_from_a_fresh_process(tmp_path):
    """The index keeps both locations of each re-stored blob; the pack that exists must win.

    Index files are read in name order, and names are random: take the case where the index
    naming the lost pack sorts first.
    """
    for attempt in range(40):
        repo, key_file, full, old_index, new_index = _lose_pack_then_back_up_in_full(tmp_path / f"{attempt}")
        if old_index < new_index:
            break
    else:
        pytest.fail("could not set up the index order")
    fresh = reopen(repo, key_file)
    (restored,) = restore_snapshot(fresh, fresh.load_snapshot(full.snapshot_id), tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == full.manifest.entries[0].sha256


def test_full_backup_after_a_lost_pack_restores_in_the_same_process_after_the_index_merges(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(index_module, "MERGE_AT", 8)  # as a database of more than MERGE_AT chunks would
    repo, _, full, _, _ = _lose_pack_then_back_up_in_full(tmp_path)
    (restored,) = restore_snapshot(repo, full.manifest, tmp_path / "out")
    assert hashlib.sha256(restored.path.read_bytes()).hexdigest() == full.manifest.entries[0].sha256
