"""While a backup runs, the till's checkpoints are Capsule's, so that no sale waits for one.

The keeper holds SQLite's checkpoint lock (the till's automatic checkpoints skip) and folds the WAL
into the database itself. These tests use a second process as the till, because SQLite's locks on
the `-shm` file belong to processes. For the same reason the test's own connection is closed before
a keeper stops: stopping closes descriptors of the database's files, which drops every POSIX lock
this process holds on them (a backup has no other connection open by then).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.adapters.sqlite import snapshot as sqlite_snapshot
from capsule.adapters.sqlite.backup import backup_database
from capsule.adapters.sqlite.snapshot import SHM_CHECKPOINT_LOCK, CheckpointKeeper, _OfdLock, copy_database
from tests.unit.support import new_repository

CHECKPOINT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO t(v) VALUES ('from the till')")
print(*conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
"""

COMMITS = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=1")  # a checkpoint after every commit, where it may
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    conn.execute("INSERT INTO t(v) VALUES ('a sale')")
    time.sleep(0.01)
"""

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _till_commits_and_checkpoints(database: Path) -> tuple[int, int, int]:
    """Another process commits a row, then checkpoints as SQLite's automatic checkpoint would:
    (busy, frames in the WAL, frames folded)."""
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


def _eventually(check: object, seconds: float = 10.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.DatabaseError):  # the file read while a fold writes it
            if check():
                return True
        time.sleep(0.02)
    return False


def _wal_restarts(database: Path) -> bytes:
    """The WAL header's checkpoint sequence number and salts: they change when the WAL restarts."""
    with open(f"{database}-wal", "rb") as f:
        return f.read(24)[12:24]


def _all_folded(keeper: CheckpointKeeper) -> bool:
    frames = keeper._frames()
    return frames is not None and frames[0] == frames[1]


def _open_descriptors() -> set[str]:
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor is gone by now
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
    return names


def _till_slips_in_once(
    monkeypatch: pytest.MonkeyPatch, db: Path, when: Callable[[CheckpointKeeper], bool]
) -> list[tuple[tuple[int, int, int], int]]:
    """The first time the keeper's description has let go of the lock and `when(keeper)` holds,
    before the process takes it, the till commits and checkpoints. Gives what its checkpoint said
    and how many rows the database file alone then had."""
    seen: list[tuple[tuple[int, int, int], int]] = []
    real = CheckpointKeeper._take

    def till_first(self: CheckpointKeeper, wait: float) -> bool:
        if not seen and when(self):
            result = _till_commits_and_checkpoints(db)
            seen.append((result, _rows_in_main_file(db)))
        return real(self, wait)

    monkeypatch.setattr(CheckpointKeeper, "_take", till_first)
    return seen


def _copy_reading(db: Path) -> sqlite3.Connection:
    """A read transaction held open, as the copy's is."""
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    return reader


@contextlib.contextmanager
def _running(keeper: CheckpointKeeper) -> Iterator[CheckpointKeeper]:
    assert keeper.start(wait=1.0)
    try:
        yield keeper
    finally:
        keeper.stop()


def test_while_the_keeper_runs_the_till_cannot_checkpoint_and_the_keeper_folds_for_it(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=50)
    with _running(CheckpointKeeper(db, every=0.05)) as keeper:
        conn.close()
        busy = _till_commits_and_checkpoints(db)[0]
        assert busy == 1, "the till's checkpoint ran although the keeper held the lock"
        assert _eventually(lambda: _rows_in_main_file(db) == 51), "the keeper did not fold the WAL"
        assert keeper.folds >= 1 and keeper.held
    busy, log, done = _till_commits_and_checkpoints(db)
    assert (busy, done) == (0, log), "the till could not checkpoint once the keeper stopped"
    assert _rows_in_main_file(db) == 52


TILL_AT_ITS_END = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("BEGIN")
conn.executemany("INSERT INTO t(v) VALUES (?)", [("a sale",)] * 50)
conn.execute("COMMIT")
busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
print(busy, log, done, flush=True)
for line in sys.stdin:  # one sale for each line; the WAL stays open while this runs
    conn.execute("INSERT INTO t(v) VALUES ('a sale')")
    print("sold", flush=True)
"""


READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM t").fetchone()
print("reading", flush=True)
sys.stdin.read()  # the read transaction lasts until the test lets go
"""


class _Till:
    """The till as a process of its own that keeps a new database open: 50 sales folded into the
    database file, then one more sale for each `sell()`. A context manager: the till ends with it."""

    def __init__(self, db: Path) -> None:
        _wal_database(db, rows=0).close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TILL_AT_ITS_END, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.checkpoint = tuple(int(x) for x in self.stdout.readline().split())

    def sell(self, sales: int = 1) -> None:
        for _ in range(sales):
            self.stdin.write("sell\n")
            self.stdin.flush()
            assert self.stdout.readline() == "sold\n"

    def __enter__(self) -> _Till:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


def test_a_keeper_starting_on_a_wal_folded_to_its_end_still_folds_what_the_till_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that begins where the WAL is folded to its end reads the database file alone, and
    # while it lasts no checkpoint may write that file. A pin taken then held every fold back for a
    # whole backup, once the till had started the WAL over; the till's first checkpoint afterwards
    # folded 12,878 pages inside one sale. (Not even for the seconds after which stalled folds
    # move the pin on regardless.)
    monkeypatch.setattr(sqlite_snapshot, "STALL_SECONDS", 60.0)
    db = tmp_path / "pos.db"
    with _Till(db) as till:
        busy, log, done = till.checkpoint
        assert (busy, done) == (0, log) and log > 0  # folded to its end, which is not its start
        with _running(CheckpointKeeper(db, every=0.05)) as keeper:
            assert _all_folded(keeper)
            before = _wal_restarts(db)
            till.sell(20)
            assert _wal_restarts(db) != before, "the till did not start the WAL over"
            assert _eventually(lambda: _rows_in_main_file(db) == 70), "the keeper's folds were held back"
    busy, log, done = _till_commits_and_checkpoints(db)
    assert busy == 0 and done == log


def test_a_pin_sharing_an_older_read_slot_moves_on_once_the_folds_get_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite has four read slots. With every one taken by the shop's readers, the keeper's pin
    # shares the newest, which is older than the WAL's end where the keeper believes it to be. The
    # folds then stop at the pin, and the pin waited for them to pass that end: forever.
    monkeypatch.setattr(sqlite_snapshot, "STALL_SECONDS", 0.5)
    db = tmp_path / "pos.db"
    readers: list[subprocess.Popen[str]] = []
    with _Till(db) as till:
        try:
            for _ in range(4):  # every read slot taken, each from a later sale
                till.sell()
                reader = subprocess.Popen(
                    [sys.executable, "-c", READER, str(db)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
                readers.append(reader)
            till.sell(5)
            with _running(CheckpointKeeper(db, every=0.05)) as keeper:
                for reader in readers:
                    assert reader.stdin is not None
                    reader.stdin.close()
                    reader.wait(timeout=30)
                assert _eventually(lambda: _rows_in_main_file(db) == 59), "the folds stopped at the pin"
                assert keeper.held
        finally:
            for reader in readers:
                reader.kill()
                reader.wait()


def test_copy_folds_the_wal_into_the_database_and_lets_go_of_everything(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=2000)
    try:
        assert _rows_in_main_file(db) == 0
        before = _open_descriptors()
        copy = copy_database(db, tmp_path / "copy.db")
        assert _open_descriptors() == before, "the copy left descriptors open"
        assert copy.journal_mode == "wal"
        # The copy's keeper folded the WAL: the database file alone now has every committed row.
        assert _rows_in_main_file(db) == 2000
        busy, log, done = _till_commits_and_checkpoints(db)
        assert busy == 0, "the checkpoint lock was still held after the copy"
        assert done == log
        check = sqlite3.connect(copy.path)
        assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 2000
        check.close()
    finally:
        conn.close()


def test_the_till_cannot_restart_the_wal_while_the_keeper_runs(tmp_path: Path) -> None:
    # Restarting the WAL syncs it inside the till's commit. The pinned reader prevents it; closing
    # any descriptor of the -shm file in this process would drop that reader's lock.
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=50)
    with _running(CheckpointKeeper(db, every=0.05)) as keeper:
        conn.close()
        for _ in range(3):
            before = _wal_restarts(db)
            # Everything is folded: the till's next commit would start the WAL over, but for the
            # reader the keeper keeps pinned.
            assert _eventually(lambda: _all_folded(keeper)), "the keeper did not fold everything"
            folds = keeper.folds
            _till_commits_and_checkpoints(db)
            assert _wal_restarts(db) == before, "the till restarted the WAL"
            assert _eventually(lambda f=folds: keeper.folds > f)


def test_a_till_slipping_in_while_the_lock_changes_hands_folds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=500)
    seen = _till_slips_in_once(monkeypatch, db, lambda keeper: keeper.folds == 1)
    with _running(CheckpointKeeper(db, every=0.05)) as keeper:
        assert _eventually(lambda: keeper.folds == 1)
        conn.execute("INSERT INTO t(v) VALUES ('another sale')")  # something for a second fold
        conn.close()
        assert _eventually(lambda: keeper.folds >= 2)
        assert keeper.held, "the keeper did not get the lock back"
    (((busy, log, done), rows_then),) = seen
    assert busy == 0  # the till did get the lock
    assert done < log
    # and folded nothing the keeper had not folded already: neither sale reached the file.
    assert rows_then == 500
    assert _rows_in_main_file(db) == 502  # the keeper's later folds took everything


def test_a_checkpoint_the_till_has_running_is_waited_for_not_broken(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=10)
    till = subprocess.Popen(
        [sys.executable, "-c", HOLD, f"{db}-shm", str(SHM_CHECKPOINT_LOCK), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    late, waiting = CheckpointKeeper(db), CheckpointKeeper(db)
    try:
        assert till.stdout is not None and till.stdout.readline().strip() == "held"
        assert not late.start(wait=0.2)  # the till's checkpoint is not broken into
        assert waiting.start(wait=10.0), "the keeper did not wait for the till's checkpoint"
        conn.close()
        assert _till_commits_and_checkpoints(db)[0] == 1
    finally:
        conn.close()
        waiting.stop()
        late.stop()
        till.kill()
        till.wait()
    assert _till_commits_and_checkpoints(db)[0] == 0


def test_rollback_journal_databases_are_copied_without_a_keeper(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES ('a')")
    conn.close()
    copy = copy_database(db, tmp_path / "copy.db")
    assert copy.journal_mode == "delete"
    assert not Path(f"{db}-shm").exists()


def test_the_keeper_holds_the_lock_until_its_last_fold_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=500)
    flushed: list[str] = []
    seen: list[int] = []
    folded: list[int] = []
    real = os.fdatasync

    def flush_with_the_till(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        flushed.append(name)
        if name == f"{db}-wal":  # the last flush: the till tries its checkpoint meanwhile
            seen.append(_till_commits_and_checkpoints(db)[0])
            folded.append(_rows_in_main_file(db))
        real(fd)

    monkeypatch.setattr(sqlite_snapshot.os, "fdatasync", flush_with_the_till)
    with _running(CheckpointKeeper(db, every=3600.0)):
        conn.close()  # stopping folds what is there
    monkeypatch.undo()
    assert seen == [1]
    # The database file after the fold, then the WAL, which the till's next checkpoint syncs first.
    assert flushed == [str(db), f"{db}-wal"]
    assert folded == [500]  # the last fold had taken every row there was before it
    busy, log, done = _till_commits_and_checkpoints(db)
    assert (busy, done) == (0, log)


def test_past_its_limit_the_wal_is_handed_back_until_the_till_restarts_it(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=50)
    till = subprocess.Popen([sys.executable, "-c", COMMITS, str(db), "30"])
    try:
        with _running(CheckpointKeeper(db, every=0.05, wal_limit=1)) as keeper:
            before = _wal_restarts(db)
            conn.close()
            assert _eventually(lambda: keeper.handbacks >= 1)
            assert _eventually(lambda: _wal_restarts(db) != before), "the WAL did not restart"
            assert _eventually(lambda: keeper.held and keeper.folds >= 2), "the lock was not taken back"
    finally:
        conn.close()
        till.kill()
        till.wait()


def test_a_backup_keeps_the_checkpoints_until_its_packs_are_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _ = new_repository(tmp_path)
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=2000)
    seen: list[int] = []
    real = type(repo).flush

    def flush_with_the_till(self: object) -> None:
        seen.append(_till_commits_and_checkpoints(db)[0])
        real(self)  # type: ignore[arg-type]

    monkeypatch.setattr(type(repo), "flush", flush_with_the_till)
    try:
        backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC))
        assert seen and seen[0] == 1, "the till could checkpoint while the backup stored its packs"
        assert _till_commits_and_checkpoints(db)[0] == 0
        assert _rows_in_main_file(db) >= 2001
    finally:
        conn.close()


@pytest.mark.parametrize("wait", [0.0, 10.0], ids=["moves-on", "waits-for-the-answer"])
def test_a_lock_granted_too_late_is_let_go_at_once(tmp_path: Path, wait: float) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=10)
    shm = f"{db}-shm"
    till = subprocess.Popen(
        [sys.executable, "-c", HOLD, shm, str(SHM_CHECKPOINT_LOCK), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert till.stdout is not None and till.stdout.readline().strip() == "held"
        lock = _OfdLock.open(shm)
        assert lock is not None
        lock.request()
        assert not lock.taken(0.2)  # the till is checkpointing
        lock.release()  # the keeper moves on while the kernel has the request
        till.wait(timeout=30)
        assert _eventually(lambda: _till_commits_and_checkpoints(db)[0] == 0), "a late lock was kept"
        lock.close(wait=wait)
        assert _till_commits_and_checkpoints(db)[0] == 0
    finally:
        till.kill()
        conn.close()


def test_the_kernel_hands_the_lock_over_when_this_process_lets_go(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=10)
    shm = os.open(f"{db}-shm", os.O_RDWR)
    lock = _OfdLock.open(f"{db}-shm")
    assert lock is not None
    try:
        fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_CHECKPOINT_LOCK)
        lock.request()
        assert not lock.taken(0.1)  # this process holds it, as SQLite does while checkpointing
        fcntl.lockf(shm, fcntl.LOCK_UN, 1, SHM_CHECKPOINT_LOCK)
        assert lock.taken(5.0)
        assert _till_commits_and_checkpoints(db)[0] == 1
        lock.release()  # let go without closing anything
        assert _till_commits_and_checkpoints(db)[0] == 0
        lock.request()  # and taken again on the same description
        assert lock.taken(5.0)
        assert _till_commits_and_checkpoints(db)[0] == 1
    finally:
        conn.close()
        lock.close()
        os.close(shm)


TILL_ROWS = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("BEGIN")
conn.executemany("INSERT INTO t(v) VALUES (?)", [("a sale " + "x" * 200,)] * int(sys.argv[2]))
conn.execute("COMMIT")
"""


def _till_sells(database: Path, rows: int) -> None:
    subprocess.run([sys.executable, "-c", TILL_ROWS, str(database), str(rows)], check=True, timeout=60)


def test_while_a_reader_holds_the_folds_back_the_pin_stays_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy's read transaction keeps the keeper's folds from passing it. A till slipping in
    # once the copy is over must not find a pin moved on meanwhile, with seconds of sales before it.
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=500)
    copy_over = threading.Event()
    seen = _till_slips_in_once(monkeypatch, db, lambda _keeper: copy_over.is_set())
    with _running(CheckpointKeeper(db, every=0.05)) as keeper:
        assert _eventually(lambda: _all_folded(keeper))
        reader = _copy_reading(db)
        for batch in (100, 100):
            folds = keeper.folds
            _till_sells(db, batch)
            assert _eventually(lambda f=folds: keeper.folds >= f + 2)  # folds tried, held back
        assert _rows_in_main_file(db) == 500
        reader.close()
        conn.close()
        copy_over.set()
        assert _eventually(lambda: bool(seen))
        assert _eventually(lambda: _rows_in_main_file(db) == 701)
    # The pin moved on once, when the first sales came; the till folded no further than that.
    assert seen[0][1] <= 600


def test_a_copy_keeps_the_pin_where_it_was_when_the_copy_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=500)
    copy_over = threading.Event()
    seen = _till_slips_in_once(monkeypatch, db, lambda _keeper: copy_over.is_set())
    with _running(CheckpointKeeper(db, every=0.05)) as keeper:
        assert _eventually(lambda: _all_folded(keeper))
        with keeper.pin_held():
            reader = _copy_reading(db)
            folds = keeper.folds
            _till_sells(db, 100)
            assert _eventually(lambda: keeper.folds >= folds + 2)  # folds tried, held back
            reader.close()
        conn.close()
        copy_over.set()
        assert _eventually(lambda: bool(seen))
        assert _eventually(lambda: _rows_in_main_file(db) == 601)
    assert seen[0][1] == 500, "a till slipping in after the copy folded what came during it"


def test_where_the_file_system_refuses_such_locks_the_copy_goes_on_without_a_keeper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    conn = _wal_database(db, rows=100)
    conn.close()
    monkeypatch.setattr(sqlite_snapshot, "_OFD_SETLKW", 0x7FFF)  # a command the kernel refuses
    keeper = CheckpointKeeper(db)
    began = time.monotonic()
    try:
        assert not keeper.start(wait=5.0)
    finally:
        keeper.stop()
    assert time.monotonic() - began < 2.0, "a refusal was waited out as if the till held the lock"
    copy = copy_database(db, tmp_path / "copy.db")
    check = sqlite3.connect(copy.path)
    assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    check.close()
