"""The database's own checks before a backup: what is refused, and when a shrink is worth a warning."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capsule.adapters.errors import SourceError
from capsule.adapters.sqlite.backup import SHRINK_WARNING_FRACTION, shrink_warning
from capsule.adapters.sqlite.snapshot import check_source
from capsule.domain.manifest import Entry, Manifest, Totals


def _snapshot_of(size: int) -> tuple[str, Manifest]:
    entry = Entry(path="pos.db", size=size, mode=0o600, mtime_ns=0, inode=1, sha256="0" * 64)
    totals = Totals(
        files=1, bytes=size, blobs=1, new_blobs=1, new_bytes=size, stored_bytes=size, duration_seconds=0
    )
    manifest = Manifest(
        kind="database",
        time=datetime.now(UTC),
        hostname="till",
        source="/data/pos.db",
        entries=[entry],
        totals=totals,
    )
    return "ab" * 32, manifest


def test_a_real_database_passes_and_a_link_to_one_too(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    (tmp_path / "link.db").symlink_to(db)

    check_source(db)
    check_source(tmp_path / "link.db")


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a folder, not a database file"),
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_bytes(b"SQLite format 2\x00" + bytes(4080)), "is not an SQLite database"),
        (lambda p: os.mkfifo(p), "is not a regular file"),
    ],
    ids=["missing", "folder", "empty", "other-header", "fifo"],
)
def test_what_is_not_a_database_file_gets_its_own_sentence(tmp_path: Path, make, says: str) -> None:
    path = tmp_path / "pos.db"
    make(path)

    with pytest.raises(SourceError) as raised:
        check_source(path)

    assert says in str(raised.value) and str(path) in str(raised.value)
    assert "CAPSULE_DATABASE" in str(raised.value)


def test_a_shrink_warns_only_under_the_threshold() -> None:
    parent = _snapshot_of(1000)
    at_threshold = int(1000 * SHRINK_WARNING_FRACTION)

    assert shrink_warning(at_threshold, parent) is None
    assert shrink_warning(5000, parent) is None
    assert shrink_warning(0, None) is None
    warning = shrink_warning(at_threshold - 1, parent)
    assert warning is not None and "under 10% of its last snapshot abababababab (1000 bytes)" in warning
