"""The copy of a WAL database keeps the till's automatic checkpoints out of its commits.

While the copy holds its read transaction the WAL grows. The backup holds SQLite's checkpoint lock
from before the copy until it has folded that WAL into the database itself, so the till never runs
that large checkpoint inside a sale's commit. These tests use a second process as the till, because
SQLite's locks on the `-shm` file belong to processes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import sqlite_snapshot
from adapters.sqlite_snapshot import CheckpointGuard, copy_database

CHECKPOINT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO t(v) VALUES ('from the till')")
print(*conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
"""


def _till_commits_and_checkpoints(database: Path) -> tuple[int, int, int]:
    """Another process commits a row, then checkpoints as SQLite's automatic checkpoint would."""
    out = subprocess.run(
        [sys.executable, "-c", CHECKPOINT, str(database)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    busy, log, done = (int(x) for x in out.stdout.split())
    return busy, log, done


def _wal_database(path: Path, rows: int) -> sqlite3.Connection:
    """A WAL database whose last `rows` rows are only in the WAL; the returned connection keeps it so."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i} " + "x" * 200,) for i in range(rows)])
    conn.execute("COMMIT")
    return conn


def _rows_in_main_file(path: Path) -> int:
    """Rows visible from the database file alone, ignoring the WAL."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def _open_descriptors() -> set[str]:
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor is gone by now
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
    return names


def test_while_the_guard_holds_the_lock_the_till_commits_but_cannot_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=50)
    guard = CheckpointGuard(db)
    try:
        assert guard.take(wait=1.0)
        busy = _till_commits_and_checkpoints(db)[0]
        assert busy == 1, "the till's checkpoint ran although the guard held the lock"
        assert _rows_in_main_file(db) == 0
        # SQLite's lock is the process's: a connection of this process still checkpoints.
        assert keeper.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
        assert _rows_in_main_file(db) == 51
    finally:
        guard.close()
        keeper.close()
    assert not guard.held


def test_once_the_guard_is_closed_the_till_checkpoints_again(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=10)
    try:
        guard = CheckpointGuard(db)
        assert guard.take(wait=1.0)
        guard.close()
        busy, log, done = _till_commits_and_checkpoints(db)
        assert (busy, done) == (0, log)
        assert _rows_in_main_file(db) == 11
    finally:
        keeper.close()


def test_copy_folds_the_wal_into_the_database_and_lets_go_of_everything(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=2000)
    try:
        assert _rows_in_main_file(db) == 0
        before = _open_descriptors()
        copy = copy_database(db, tmp_path / "copy.db")
        assert _open_descriptors() == before, "the copy left descriptors open"
        assert copy.journal_mode == "wal"
        # The backup ran the checkpoint: the database file alone now has every committed row.
        assert _rows_in_main_file(db) == 2000
        busy, log, done = _till_commits_and_checkpoints(db)
        assert busy == 0, "the checkpoint lock was still held after the copy"
        assert done == log
        check = sqlite3.connect(copy.path)
        assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 2000
        check.close()
    finally:
        keeper.close()


def _till_at_the_checkpoint(
    monkeypatch: pytest.MonkeyPatch, db: Path, *, after: bool
) -> list[tuple[int, int, int]]:
    """Make the till commit and checkpoint just before the backup's own checkpoint, or just after
    it (once SQLite has let go of the lock); return what its checkpoints said."""
    seen: list[tuple[int, int, int]] = []
    real = sqlite_snapshot._checkpoint

    def with_the_till(conn: sqlite3.Connection) -> None:
        if not after:
            seen.append(_till_commits_and_checkpoints(db))  # the copy is done, the WAL is still there
        real(conn)
        if after:
            seen.append(_till_commits_and_checkpoints(db))

    monkeypatch.setattr(sqlite_snapshot, "_checkpoint", with_the_till)
    return seen


def test_from_before_the_copy_until_its_own_checkpoint_the_backup_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=500)
    seen = _till_at_the_checkpoint(monkeypatch, db, after=False)
    try:
        copy_database(db, tmp_path / "copy.db")
        assert [busy for busy, _, _ in seen] == [1]
        # The backup's checkpoint folded in what was there before its pinned reader; the till's
        # row came after, and the till's next checkpoint folds it.
        busy, log, done = _till_commits_and_checkpoints(db)
        assert (busy, done) == (0, log)
        assert _rows_in_main_file(db) == 502
    finally:
        keeper.close()


def test_a_till_that_wins_the_lock_after_the_backups_checkpoint_finds_nothing_to_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=500)
    # No hand-over in the kernel: SQLite's release drops the process's lock, and the till is first.
    monkeypatch.setattr(sqlite_snapshot._Successor, "start", classmethod(lambda cls, path: None))
    seen = _till_at_the_checkpoint(monkeypatch, db, after=True)
    try:
        copy_database(db, tmp_path / "copy.db")
        ((busy, log, done),) = seen
        assert busy == 0  # it did get the lock
        assert done < log  # and folded nothing past the backup's pinned reader: no row of its own
        assert _till_commits_and_checkpoints(db)[0] == 0  # later, it folds everything as usual
    finally:
        keeper.close()


def test_a_checkpoint_the_till_has_running_is_waited_for_not_broken(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=10)
    holder = CheckpointGuard(db)  # stands in for a till in the middle of its checkpoint
    try:
        assert holder.take(wait=1.0)
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from adapters.sqlite_snapshot import CheckpointGuard;"
                "g = CheckpointGuard(Path(sys.argv[1])); print(g.take(wait=0.2)); g.close()",
                str(db),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert child.stdout.strip().splitlines()[-1] == "False"
    finally:
        holder.close()
        keeper.close()


def test_rollback_journal_databases_are_copied_without_a_guard(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES ('a')")
    conn.close()
    copy = copy_database(db, tmp_path / "copy.db")
    assert copy.journal_mode == "delete"
    assert not Path(f"{db}-shm").exists()


def test_after_its_own_checkpoint_the_backup_keeps_the_lock_until_the_database_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=500)
    seen: list[tuple[int, int, int]] = []
    real_close = sqlite_snapshot._Successor.close

    def till_then_close(self: sqlite_snapshot._Successor, wait: float = 0.0) -> None:
        seen.append(_till_commits_and_checkpoints(db))  # SQLite has let go; the backup has not
        real_close(self, wait)

    monkeypatch.setattr(sqlite_snapshot._Successor, "close", till_then_close)
    try:
        copy_database(db, tmp_path / "copy.db")
        assert [busy for busy, _, _ in seen] == [1]
        busy, log, done = _till_commits_and_checkpoints(db)  # and after it, the till again
        assert (busy, done) == (0, log)
    finally:
        keeper.close()


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.mark.parametrize("wait", [0.0, 10.0], ids=["moves-on", "waits-for-the-answer"])
def test_the_lock_handed_over_too_late_is_let_go_at_once(tmp_path: Path, wait: float) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=10)
    shm = f"{db}-shm"
    till = subprocess.Popen(
        [sys.executable, "-c", HOLD, shm, str(sqlite_snapshot.SHM_CHECKPOINT_LOCK), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert till.stdout is not None and till.stdout.readline().strip() == "held"
        successor = sqlite_snapshot._Successor.start(shm)
        assert successor is not None
        assert not successor.taken(0.2)  # the till is checkpointing
        successor.close(wait=wait)  # the backup moves on, or waits, while the kernel has the request
        if wait:  # closing waited for the kernel's answer, which the thread let go of at once
            assert not successor._thread.is_alive()
        till.wait(timeout=30)
        successor._thread.join(timeout=10)
        assert not successor._thread.is_alive()
        busy, log, done = _till_commits_and_checkpoints(db)
        assert (busy, done) == (0, log), "a lock handed over too late was kept"
    finally:
        till.kill()
        keeper.close()


def test_the_kernel_hands_the_lock_over_when_this_process_lets_go(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=10)
    guard = CheckpointGuard(db)
    try:
        assert guard.take(wait=1.0)
        successor = sqlite_snapshot._Successor.start(f"{db}-shm")
        assert successor is not None
        assert not successor.taken(0.1)  # this process holds it, as SQLite does while checkpointing
        guard.release()
        assert successor.taken(5.0)
        assert _till_commits_and_checkpoints(db)[0] == 1
        successor.close()
        assert _till_commits_and_checkpoints(db)[0] == 0
    finally:
        guard.close()
        keeper.close()


def test_the_flush_after_the_copy_covers_the_wal_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The till's next checkpoint syncs the WAL first: what the till wrote during the backup's own
    # checkpoint is flushed beforehand, so that its sale does not wait for it.
    db = tmp_path / "pos.db"
    keeper = _wal_database(db, rows=500)
    flushed: set[str] = set()
    real = os.fdatasync

    def recording(fd: int) -> None:
        flushed.add(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(sqlite_snapshot.os, "fdatasync", recording)
    try:
        copy_database(db, tmp_path / "copy.db")
        assert {str(db), f"{db}-wal"} <= flushed
    finally:
        keeper.close()
