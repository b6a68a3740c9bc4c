"""`decode_entries` gives what the `Entry` model gives: equal entries, or the model's error.

It validates with the model's schema minus its two Python validators and checks what they check
once per blob; these properties feed it what a backup writes and what the model refuses or
converts: wrong types, numbers in strings, booleans, refused paths and hashes, fields that do not
fit the type, extra and missing keys, broken JSON and encodings.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from capsule.adapters.files import entries as entries_module
from capsule.adapters.files.entries import ENTRIES, decode_entries
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, ensure_relative_path

HEX = "0123456789abcdef"
SHA = st.text(HEX, min_size=64, max_size=64)
IDS = st.lists(st.text(HEX, min_size=64, max_size=64), max_size=3)
NAMES = st.sampled_from(["a", "b.jpg", "é", "..", ".", "", "a b", "x\\y", "\x00", "\ufeff"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join) | st.sampled_from(["/a", "a/", "a//b"])
INTS = st.integers(min_value=-(2**70), max_value=2**70)


def written_entry() -> st.SearchStrategy[Entry]:
    """Entries as a backup makes them: files, folders, links."""
    meta = {"mode": st.integers(0, 0o7777), "mtime_ns": st.integers(0, 2**63), "inode": st.none() | INTS}
    good = st.lists(st.sampled_from(["a", "b.jpg", "é", "a b"]), min_size=1, max_size=3).map("/".join)
    files = st.builds(
        Entry,
        path=good,
        size=st.integers(0, 2**40),
        sha256=SHA,
        blobs=IDS,
        blob_lists=IDS,
        ctime_ns=st.none() | st.integers(0, 2**63),
        **meta,
    )
    dirs = st.builds(Entry, path=good, type=st.just("dir"), **meta)
    links = st.builds(
        lambda path, target, **kw: Entry(
            path=path, type="symlink", target=target, size=len(target.encode()), **kw
        ),
        path=good,
        target=st.text(min_size=1, max_size=5).filter(lambda t: "\x00" not in t and t.isprintable()),
        **meta,
    )
    return files | dirs | links


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | st.text(max_size=8) | SHA | PATHS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=6,
)
FIELD_VALUES = {
    "path": PATHS,
    "type": st.sampled_from(["file", "dir", "symlink", "File", None]),
    "size": INTS | st.sampled_from([True, "5", 1.0, None]),
    "mode": INTS | st.sampled_from([True, "420", 420.0, None]),
    "mtime_ns": INTS | st.sampled_from(["7", None, 1.5]),
    "inode": st.none() | INTS | st.just("8"),
    "ctime_ns": st.none() | INTS | st.just(False),
    "sha256": st.none() | SHA | st.sampled_from(["A" * 64, "0" * 63, "0" * 64 + "\n", 5]),
    "target": st.none() | st.text(max_size=4) | st.just(3),
    "blobs": IDS | st.sampled_from([None, [1], "ab", [None]]),
    "blob_lists": IDS | st.sampled_from([None, [2.0], {}]),
    "sqlite": st.none()
    | st.just({"page_size": 4096, "page_count": 1, "journal_mode": "wal", "pages_per_chunk": 8}),
}


@st.composite
def altered(draw: st.DrawFn) -> bytes:
    """Written entries, then some of them changed: a field replaced, dropped or added."""
    items: list[dict[str, Any]] = json.loads(
        ENTRIES.dump_json(draw(st.lists(written_entry(), max_size=4)), exclude_defaults=draw(st.booleans()))
    )
    for item in items:
        for _ in range(draw(st.integers(0, 2))):
            how = draw(st.sampled_from(["set", "drop", "extra"]))
            name = draw(st.sampled_from(sorted(FIELD_VALUES)))
            if how == "set":
                item[name] = draw(FIELD_VALUES[name])
            elif how == "drop":
                item.pop(name, None)
            else:
                item[draw(st.text(max_size=4))] = draw(JSON_VALUES)
    return json.dumps(items, ensure_ascii=draw(st.booleans())).encode()


def outcome(decode: Any, raw: bytes) -> tuple[Any, ...]:
    try:
        got = decode(raw)
    except Exception as e:  # the two must fail alike, whatever the error
        return ("refused", type(e), str(e))
    return (
        "read",
        got,
        [(e.__dict__, e.__pydantic_fields_set__, e.__pydantic_extra__, e.__pydantic_private__) for e in got],
        [[type(v) for v in e.__dict__.values()] for e in got],
    )


def assert_same(raw: bytes) -> None:
    assert outcome(decode_entries, raw) == outcome(ENTRIES.validate_json, raw)


@given(st.lists(written_entry(), max_size=8), st.booleans())
@settings(max_examples=100, deadline=None)
def test_entries_a_backup_writes_read_as_the_model_reads_them_without_the_model(
    written: list[Entry], exclude_defaults: bool
) -> None:
    raw = ENTRIES.dump_json(written, exclude_defaults=exclude_defaults)
    # The quick path decides: the shape takes it and every path passes the bulk check.
    assert entries_module._SHAPE.validate_json(raw) == written
    assert entries_module.paths_safe([e.path for e in written])
    assert_same(raw)


@given(altered())
@settings(max_examples=60, deadline=None)
@example(b'[{"path":"a","mode":1,"mtime_ns":2,"sha256":"' + b"0" * 64 + b'","blobs":null}]')
@example(b'[{"path":"a","mode":true,"mtime_ns":2,"sha256":"' + b"0" * 64 + b'"}]')
@example(b'[{"path":"a\\ud800","mode":1,"mtime_ns":2,"sha256":"' + b"0" * 64 + b'"}]')
@example(b'[{"path":"a","mode":1,"mtime_ns":2,"sha256":"' + b"0" * 64 + b'","path":"../b"}]')
@example(b'[{"path":"l","type":"symlink","target":"xy","size":1,"mode":1,"mtime_ns":2}]')
@example(b'[{"path":"d","type":"dir","size":0,"target":null,"mode":1,"mtime_ns":2,"blobs":[]}]')
@example(b"\xef\xbb\xbf[]")
@example(b"[]")
@example(b"{}")
@example(b'[{"path":"\xff","mode":1,"mtime_ns":2,"sha256":"' + b"0" * 64 + b'"}]')
@example(b'[{"path":"a","mode":1,"mtime_ns":NaN,"sha256":"' + b"0" * 64 + b'"}]')
@example(b"[1e400]")
def test_any_other_input_is_read_or_refused_as_the_model_does(raw: bytes) -> None:
    assert_same(raw)


@given(altered(), st.integers(0, 200), st.binary(min_size=1, max_size=3))
@settings(max_examples=60, deadline=None)
def test_damaged_bytes_are_read_or_refused_as_the_model_does(raw: bytes, at: int, junk: bytes) -> None:
    at = min(at, len(raw))
    assert_same(raw[:at] + junk + raw[at + len(junk) :])


PATH_PARTS = st.sampled_from(["a", "é", ".", "..", "", "...", ".a", "a.", "\\", "\x00", "/", "\n", " "])


def one_by_one(paths: list[str]) -> bool:
    try:
        for path in paths:
            ensure_relative_path(path)
    except UnsafePath:
        return False
    return True


@given(st.lists(st.lists(PATH_PARTS, max_size=6).map("".join) | PATHS, max_size=5))
@settings(max_examples=400, deadline=None)
@example(["a", ""])
@example(["a/", "b"])
@example(["a", "/b"])
@example(["a/..", "b"])
@example(["a/../b"])
@example(["a/./b", "c"])
def test_paths_checked_together_are_refused_exactly_when_one_of_them_is(paths: list[str]) -> None:
    assert entries_module.paths_safe(paths) == one_by_one(paths)
