"""Paths in a manifest stay inside the folder they are restored to."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from capsule.adapters.repository.restore import safe_target
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, Manifest, Totals, check_relative_path

UNSAFE = [
    "",
    "/",
    "/etc/passwd",
    "//server/share",
    "..",
    "../pos.db",
    "data/../../pos.db",
    "data/..",
    "a/b/../../../c",
    "a//b",
    "a/",
    "/a",
    ".",
    "./",
    "./pos.db",
    "data/./pos.db",
    "data/.",
    "a\\b",
    "..\\..\\windows",
    "C:\\pos.db",
    "pos\x00.db",
    "\x00",
]

SAFE = ["pos.db", "data/pos.db", "uploads/products/12/photo.jpg", "...", "..db", "a..b", ".hidden", "a/.b"]


def _entry(path: str) -> Entry:
    return Entry(path=path, size=1, mode=0o644, mtime_ns=0, sha256="a" * 64)


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_path_is_refused(path):
    with pytest.raises(UnsafePath):
        check_relative_path(path)


@pytest.mark.parametrize("path", UNSAFE)
def test_entry_with_unsafe_path_cannot_be_made(path):
    with pytest.raises(UnsafePath):
        _entry(path)


@pytest.mark.parametrize("path", SAFE)
def test_normal_relative_path_is_accepted(path):
    assert check_relative_path(path) == PurePosixPath(path)
    assert _entry(path).path == path


@given(
    parts=st.lists(st.sampled_from(["data", "pos.db", "a", "b.txt", "x y"]), min_size=1, max_size=5),
    position=st.integers(0, 5),
    bad=st.sampled_from(["..", ""]),
)
def test_dotdot_or_empty_part_anywhere_is_refused(parts, position, bad):
    parts.insert(min(position, len(parts)), bad)
    with pytest.raises(UnsafePath):
        check_relative_path("/".join(parts))


@given(parts=st.lists(st.sampled_from(["data", "pos.db", "a", "b.txt", "x y", "é"]), min_size=1, max_size=6))
def test_nested_relative_paths_land_inside_the_root(tmp_path_factory, parts):
    root = tmp_path_factory.getbasetemp() / "restore-root"
    path = "/".join(parts)
    target = safe_target(root, path)
    assert target.is_relative_to(root.resolve())
    assert target.parts[-len(parts) :] == tuple(parts)


def test_manifest_with_an_unsafe_entry_path_is_rejected_when_read():
    entry = _entry("pos.db").model_dump()
    entry["path"] = "../../etc/cron.d/evil"
    body = {
        "kind": "files",
        "time": datetime(2024, 1, 1, tzinfo=UTC).isoformat(),
        "hostname": "till",
        "source": "uploads",
        "entries": [entry],
        "totals": Totals(
            files=1, bytes=1, blobs=0, new_blobs=0, new_bytes=0, stored_bytes=0, duration_seconds=0
        ).model_dump(),
    }
    with pytest.raises(UnsafePath):
        Manifest.model_validate(body)


def test_entry_rejects_a_malformed_digest_and_a_negative_size():
    with pytest.raises(ValidationError):
        Entry(path="pos.db", size=1, mode=0o644, mtime_ns=0, sha256="not-a-digest")
    with pytest.raises(ValidationError):
        Entry(path="pos.db", size=-1, mode=0o644, mtime_ns=0, sha256="a" * 64)


def test_restore_target_refuses_to_pass_through_a_symlink(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "data").symlink_to(outside)
    with pytest.raises(UnsafePath):
        safe_target(root, "data/pos.db")
