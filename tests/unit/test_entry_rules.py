"""The rules a snapshot's entries keep, checked between neighbours only.

Restore once remembered every file and link of a snapshot to refuse a path under any of them;
`check_follows` compares each entry with the one before it. In strict walk order the two agree,
and these properties hold it to that, so verify can check each tree blob once and only its edges
for every snapshot that names it.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.adapters.errors import IntegrityError
from capsule.adapters.files.tree import path_key
from capsule.adapters.repository.entry_rules import check_database_snapshot, check_follows, restored_mode
from capsule.domain.errors import CapsuleError, UnsafePath
from capsule.domain.manifest import Entry, Manifest, Totals

NAMES = st.sampled_from(["a", "b", "a-b", "a.b", "z"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)
TYPES = st.sampled_from(["file", "dir", "symlink"])


def entry(path: str, kind: str) -> Entry:
    if kind == "symlink":
        return Entry(path=path, type="symlink", target="x", size=1, mode=0o777, mtime_ns=0)
    if kind == "dir":
        return Entry(path=path, type="dir", mode=0o755, mtime_ns=0)
    return Entry(path=path, mode=0o644, mtime_ns=0, sha256="0" * 64)


def first_refusal_by_neighbours(entries: list[Entry]) -> str | None:
    previous = None
    for e in entries:
        try:
            check_follows(previous, e)
        except CapsuleError:
            return e.path
        previous = e
    return None


def first_refusal_by_memory(entries: list[Entry]) -> str | None:
    """The rule as restore applied it before: remember every file and link seen so far."""
    not_folders: set[str] = set()
    previous: list[str] | None = None
    for e in entries:
        key = path_key(e.path)
        if previous is not None and key <= previous:
            return e.path
        previous = key
        if any("/".join(key[:n]) in not_folders for n in range(1, len(key))):
            return e.path
        if e.type != "dir":
            not_folders.add(e.path)
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PATHS, TYPES), max_size=12), st.booleans())
def test_neighbours_refuse_exactly_what_remembering_every_file_refuses(
    items: list[tuple[str, str]], in_order: bool
) -> None:
    if in_order:
        items = sorted(dict(items).items(), key=lambda item: path_key(item[0]))
    entries = [entry(path, kind) for path, kind in items]

    assert first_refusal_by_neighbours(entries) == first_refusal_by_memory(entries)


def test_a_path_under_a_file_or_a_link_is_refused_and_under_a_folder_is_not() -> None:
    with pytest.raises(UnsafePath, match="passes through the file 'a'"):
        check_follows(entry("a", "file"), entry("a/b", "file"))
    with pytest.raises(UnsafePath, match="passes through the symbolic link 'a'"):
        check_follows(entry("a", "symlink"), entry("a/b", "file"))
    check_follows(entry("a", "dir"), entry("a/b", "file"))
    check_follows(entry("a", "file"), entry("a-b", "file"))
    with pytest.raises(IntegrityError, match="twice or out of order"):
        check_follows(entry("b", "file"), entry("a", "file"))


@pytest.mark.parametrize(
    ("mode", "special_bits", "restored"),
    [
        (0o4755, False, 0o755),
        (0o2775, False, 0o775),
        (0o6750, False, 0o750),
        (0o1777, False, 0o1777),
        (0o4755, True, 0o4755),
        (0o6750, True, 0o6750),
        (stat.S_IFREG | 0o4644, False, 0o644),
    ],
)
def test_setuid_and_setgid_are_restored_only_when_asked_and_sticky_always(
    mode: int, special_bits: bool, restored: int
) -> None:
    assert restored_mode(mode, special_bits) == restored


def manifest_with(entries: list[Entry]) -> Manifest:
    totals = Totals(files=1, bytes=0, blobs=0, new_blobs=0, new_bytes=0, stored_bytes=0, duration_seconds=0)
    time = datetime(2026, 12, 1, tzinfo=UTC)
    return Manifest(
        kind="database", time=time, hostname="till", source="pos.db", entries=entries, totals=totals
    )


def test_a_database_snapshot_must_be_one_file() -> None:
    check_database_snapshot(manifest_with([entry("pos.db", "file")]))
    for entries in ([], [entry("pos.db", "dir")], [entry("a.db", "file"), entry("b.db", "file")]):
        with pytest.raises(IntegrityError, match="instead of one database file"):
            check_database_snapshot(manifest_with(entries))
