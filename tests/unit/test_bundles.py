"""Bundles: a database's new pages sealed together, one zstd frame and one seal for up to 64 of them.

Each page keeps its own id and index record, so deduplication stays per page; these tests check the
layout the workers write, that every member reads back alone, that equal pages are still stored once,
that damage to a bundle fails all of its members, and that a version 1 repository gets none.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from capsule.adapters.errors import BlobNotFound, IntegrityError
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.chunks import split_ids
from capsule.adapters.repository.index import header_records
from capsule.adapters.repository.pack import (
    BUNDLE_ZSTD,
    BUNDLED,
    COMPRESSION_NONE,
    HEADER_ENTRY,
    PackBuilder,
    parse_header,
)
from capsule.adapters.repository.rebuild import read_pack_header, rebuild_index
from capsule.adapters.repository.repo import Repository, _canonical
from capsule.adapters.repository.restore import content_id_groups, content_ids, restore_snapshot
from capsule.adapters.repository.verify import verify
from capsule.adapters.sqlite.backup import backup_database
from capsule.adapters.workers import restorepool
from capsule.adapters.workers.restorepool import REQUEST_BYTES, _Requests
from capsule.adapters.workers.sealworker import BUNDLE_BYTES, FRAME, OPEN_ITEM
from tests.unit.support import flip_bit, new_repository, reopen


def _database(path: Path, rows: int, *, secure_delete: bool = False) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    if secure_delete:
        conn.execute("PRAGMA secure_delete=ON")
    conn.execute("CREATE TABLE sales(id INTEGER PRIMARY KEY, note TEXT)")
    conn.executemany(
        "INSERT INTO sales(note) VALUES (?)", [(f"sale {i} of the day " * 12,) for i in range(rows)]
    )
    conn.commit()
    if secure_delete:  # deleted pages are zeroed: hundreds of identical pages among the others
        conn.execute("CREATE TABLE scratch(body TEXT)")
        conn.execute("CREATE TABLE kept(body TEXT)")
        for i in range(800):  # a page each, alternating, so the zeroed ones spread over the file
            conn.execute("INSERT INTO scratch VALUES (?)", ("x" * 3000,))
            conn.execute("INSERT INTO kept VALUES (?)", (f"kept {i} " * 300,))
        conn.commit()
        conn.execute("DROP TABLE scratch")
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _edit_rows(db: Path, rows: int, *, every: int) -> None:
    """Rewrite the note of every `every`-th sale in place, all over the file, and checkpoint."""
    conn = sqlite3.connect(db)
    for i in range(1, rows, every):
        conn.execute("UPDATE sales SET note = ? WHERE id = ?", (f"changed {i} " * 30, i))
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _backup(repo: Repository, db: Path, tmp_path: Path) -> tuple[str, object]:
    result = backup_database(repo, db, tmp_path / "staging", now=datetime.now(UTC), workers=2)
    return result.snapshot_id, result.manifest


def _headers(repo: Repository) -> dict[str, list]:
    return {name: read_pack_header(repo, name) for name in repo.backend.list("data")}


def test_a_database_backup_seals_its_pages_in_bundles_that_open_member_by_member(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 4000)
    repo, key_file = new_repository(tmp_path)
    _, manifest = _backup(repo, db, tmp_path)
    pages = db.stat().st_size // 4096
    assert pages > 200

    headers = _headers(repo)
    members = [b for blobs in headers.values() for b in blobs if b.compression in BUNDLED]
    # Every page but a lone one at the end of a 1 MiB block is in a bundle, compressed.
    assert len(members) >= pages - pages // 256 - 1
    assert {b.compression for b in members} == {BUNDLE_ZSTD}
    for name, blobs in headers.items():
        raw = repo.backend.read("data", name)
        # The header as written: each bundle's first entry carries its stored length, the rest 0.
        sizes = Counter(b.offset for b in blobs if b.compression in BUNDLED)
        assert all(2 <= n <= BUNDLE_BYTES // 4096 for n in sizes.values())
        firsts = [b for b in blobs if b.compression in BUNDLED and b.within == 0]
        assert len(firsts) == len(sizes)
        assert len({b.blob_id for b in blobs}) == len(blobs)  # an id at most once in a pack
        assert [tuple(b)[1:] for b in blobs] == [tuple(r)[1:] for r in _records_from(raw, repo)]

    # Each member reads back alone from a fresh handle, checked against its id, and is the page
    # at its place in the database.
    fresh = reopen(repo, key_file)
    fresh.load_index()
    ids = [i for group in content_ids(fresh, manifest.entries[0]) for i in group]
    data = db.read_bytes()
    for position in range(0, len(ids), 37):
        loc = fresh.index.lookup(ids[position])
        assert loc is not None and loc.compression in BUNDLED
        page = data[position * 4096 : (position + 1) * 4096]
        assert fresh.read_blob(ids[position]) == page or position == 0  # page 1's counters differ
    out = tmp_path / "out"
    restore_snapshot(fresh, manifest, out, workers=2)
    assert (out / "pos.db").read_bytes()[100:] == data[100:]


def _records_from(raw: bytes, repo: Repository) -> list[tuple]:
    """Index records computed the way a writer does, from the header entries themselves."""
    blobs = parse_header(repo.sealer, raw, len(raw), "pack")
    entries = b"".join(
        HEADER_ENTRY.pack(
            b.blob_type, b.compression, b.length if b.within == 0 else 0, b.plain_length, b.blob_id
        )
        for b in blobs
    )
    recs = header_records(entries)
    return [
        (bytes(r["id"]), *(int(r[f]) for f in ("type", "comp", "offset", "length", "plain", "within")))
        for r in recs
    ]


def test_equal_pages_are_stored_once_and_every_pack_verifies(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 1500, secure_delete=True)
    zero = bytes(4096)
    data = db.read_bytes()
    assert sum(data[i : i + 4096] == zero for i in range(0, len(data), 4096)) > 300

    repo, key_file = new_repository(tmp_path, pack_size=256 * 1024)
    _, manifest = _backup(repo, db, tmp_path)
    stored = Counter(b.blob_id for blobs in _headers(repo).values() for b in blobs)
    assert max(stored.values()) == 1
    pages = {b.blob_id for blobs in _headers(repo).values() for b in blobs if b.blob_type == 0}
    assert manifest.totals.new_blobs == len(pages) < manifest.totals.blobs

    fresh = reopen(repo, key_file)
    report = verify(fresh, read_data=True)
    assert report.ok, [p.as_dict() for p in report.problems]
    assert report.blobs == len(stored)
    out = tmp_path / "out"
    restore_snapshot(fresh, manifest, out, workers=2)
    assert (out / "pos.db").read_bytes()[100:] == data[100:]


def test_a_flipped_byte_in_a_bundle_fails_all_of_its_members_and_no_others(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 2000)
    repo, key_file = new_repository(tmp_path)
    snapshot, manifest = _backup(repo, db, tmp_path)
    name, blobs = next((n, b) for n, b in _headers(repo).items() if any(x.compression in BUNDLED for x in b))
    bundles = sorted({(b.offset, b.length) for b in blobs if b.compression in BUNDLED})
    offset, length = bundles[len(bundles) // 2]
    path = repo.backend.path_of("data", name)
    path.chmod(0o600)
    path.write_bytes(flip_bit(path.read_bytes(), (offset + length // 2) * 8))

    fresh = reopen(repo, key_file)
    fresh.load_index()
    hit = [b for b in blobs if b.offset == offset]
    assert len(hit) >= 2
    for b in blobs:
        if b.offset == offset:
            with pytest.raises(IntegrityError):
                fresh.read_blob(b.blob_id)
        else:
            assert fresh.sealer.blob_id(fresh.read_blob(b.blob_id)) == b.blob_id

    report = verify(reopen(repo, key_file), read_data=True)
    assert not report.ok
    [problem] = [p for p in report.problems if p.subject == f"pack {name[:12]}" and p.affected]
    assert problem.affected == [(snapshot, "pos.db")]
    with pytest.raises(IntegrityError):
        restore_snapshot(reopen(repo, key_file), manifest, tmp_path / "out", workers=2)
    assert not (tmp_path / "out" / "pos.db").exists()


def _as_version_1(repo: Repository, key_file: Path) -> Repository:
    path = repo.backend.root / "config"
    config = json.loads(path.read_text())
    config["version"] = 1
    body = {k: v for k, v in config.items() if k != "mac"}
    config["mac"] = repo.sealer.mac(_canonical(body)).hex()
    path.write_text(json.dumps(config, indent=2) + "\n")
    return Repository.open(LocalBackend(repo.backend.root), key_file)


def _index_magics(repo: Repository) -> set[bytes]:
    return {repo.load_sealed("index", name)[:4] for name in repo.backend.list("index")}


def test_a_version_1_repository_gets_no_bundles_and_keeps_version_1_index_files(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 2000)
    repo, key_file = new_repository(tmp_path)
    old = _as_version_1(repo, key_file)
    assert old.version == 1 and not old.bundles
    _, manifest = _backup(old, db, tmp_path)
    comps = {b.compression for blobs in _headers(old).values() for b in blobs}
    assert comps <= {COMPRESSION_NONE, 1} and 1 in comps
    assert _index_magics(old) == {b"CIX1"}

    rebuild_index(reopen(old, key_file))
    assert _index_magics(old) == {b"CIX1"}
    again = reopen(old, key_file)
    assert json.loads((old.backend.root / "config").read_text())["version"] == 1
    out = tmp_path / "out"
    restore_snapshot(again, manifest, out, workers=2)
    assert (out / "pos.db").read_bytes()[100:] == db.read_bytes()[100:]
    assert verify(reopen(old, key_file), read_data=True).ok


def test_a_new_repository_is_version_2_and_its_index_files_say_so(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 500)
    repo, key_file = new_repository(tmp_path)
    assert json.loads((repo.backend.root / "config").read_text())["version"] == 2
    _backup(repo, db, tmp_path)
    assert _index_magics(repo) == {b"CIX2"}
    rebuild_index(reopen(repo, key_file))
    assert _index_magics(repo) == {b"CIX2"}


def _sealed_header(repo: Repository, entries: list[tuple[int, int, int, int]], payload: int) -> bytes:
    """A pack of `payload` filler bytes whose header lists `entries` (type, comp, stored, plain)."""
    builder = PackBuilder()
    builder.add_run(
        b"".join(HEADER_ENTRY.pack(t, c, n, p, bytes([k]) * 32) for k, (t, c, n, p) in enumerate(entries)),
        memoryview(bytes(payload)),
    )
    return builder.finish(repo.sealer)[1]


@pytest.mark.parametrize(
    "entries",
    [
        [(0, BUNDLE_ZSTD, 0, 4096)],  # a member with no bundle before it
        [(0, 1, 100, 4096), (0, BUNDLE_ZSTD, 0, 4096)],  # after an ordinary blob
        [(0, BUNDLE_ZSTD, 100, 4096), (1, BUNDLE_ZSTD, 0, 4096)],  # another type than its bundle
        [(0, BUNDLE_ZSTD, 100, 4096), (0, BUNDLED[1], 0, 4096)],  # another compression
        [(0, 1, 100, 4096), (0, 1, 0, 4096)],  # an ordinary blob with no bytes
    ],
    ids=["first", "after-blob", "other-type", "other-compression", "empty-blob"],
)
def test_a_pack_header_with_a_misplaced_bundle_member_is_refused(tmp_path: Path, entries: list) -> None:
    repo, _ = new_repository(tmp_path)
    raw = _sealed_header(repo, entries, sum(e[2] for e in entries))
    with pytest.raises(IntegrityError, match=r"bundle|no bytes"):
        parse_header(repo.sealer, raw, len(raw), "pack")


def test_a_well_formed_bundle_header_gives_each_member_its_place(tmp_path: Path) -> None:
    repo, _ = new_repository(tmp_path)
    entries = [
        (0, 1, 100, 4096),
        (0, BUNDLE_ZSTD, 300, 4096),
        (0, BUNDLE_ZSTD, 0, 4096),
        (0, BUNDLE_ZSTD, 0, 10),
    ]
    raw = _sealed_header(repo, entries, 400)
    blobs = parse_header(repo.sealer, raw, len(raw), "pack")
    assert [(b.offset, b.length, b.plain_length, b.within) for b in blobs] == [
        (0, 100, 4096, 0),
        (100, 300, 4096, 0),
        (100, 300, 4096, 4096),
        (100, 300, 10, 8192),
    ]


def test_restore_requests_never_split_a_bundle_after_incremental_backups(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 12000)
    repo, key_file = new_repository(tmp_path)
    _backup(repo, db, tmp_path)
    _edit_rows(db, 12000, every=97)  # a few rows all over the file, in place
    _, manifest = _backup(repo, db, tmp_path)
    assert manifest.totals.new_blobs > 20

    fresh = reopen(repo, key_file)
    fresh.load_index()
    requests = _Requests(fresh, manifest.entries[0])
    seen: dict[tuple[int, int], int] = {}
    offset = 0
    for group in content_id_groups(fresh, manifest.entries[0]):
        ids = split_ids(group)
        built = requests.build(group, offset)
        assert sum(plain for _, plain in built) == 4096 * len(ids)
        pos, packs, recs = fresh.index.columns(ids)
        assert (pos >= 0).all()
        window = (offset + 4096 * np.arange(len(ids))) // REQUEST_BYTES
        for k, (pack, rec) in enumerate(zip(packs.tolist(), recs.tolist(), strict=True)):
            if rec[2] in BUNDLED:
                # Every member of a bundle is written by the request of one window of the file.
                assert seen.setdefault((pack, rec[3]), int(window[k])) == int(window[k])
        offset += 4096 * len(ids)
    assert len(seen) > 10


def _recs(rows: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(packs, records) for (pack number, offset, length) rows, the other fields left zero."""
    recs = np.zeros(len(rows), dtype=[("offset", "<u8"), ("length", "<u4")])
    recs["offset"] = [r[1] for r in rows]
    recs["length"] = [r[2] for r in rows]
    return np.array([r[0] for r in rows], dtype=np.uint32), recs


def test_readahead_spans_join_neighbours_of_one_pack_and_cover_every_blob() -> None:
    rows = [
        (2, 5000, 100),  # pack 2, out of order
        (1, 0, 1000),
        (1, 1000, 1000),  # end to end with the one before
        (1, 0, 1000),  # a second member of the first bundle
        (1, 2000 + 64, 10),  # exactly `gap` after the last end: joined
        (1, 2074 + 65, 10),  # one byte more than `gap`: a new span
        (1, 2139, 5),  # inside the span it starts
        (2, 0, 6000),  # covers the other blob of pack 2
    ]
    packs, recs = _recs(rows)
    spans = restorepool._spans(packs, recs, 64)
    assert spans == [(1, 0, 2074), (1, 2139, 10), (2, 0, 6000)]
    for number, offset, length in rows:
        assert any(n == number and s <= offset and offset + length <= s + ln for n, s, ln in spans)
    assert restorepool._spans(*_recs([]), 64) == []


def test_restore_asks_ahead_for_every_blob_it_reads_after_incremental_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    _database(db, 6000)
    repo, key_file = new_repository(tmp_path)
    _backup(repo, db, tmp_path)
    _edit_rows(db, 6000, every=61)
    _, manifest = _backup(repo, db, tmp_path)
    asked: list[tuple[str, int, int]] = []
    monkeypatch.setattr(restorepool.Readahead, "ask", lambda self, ranges: asked.extend(ranges))
    fresh = reopen(repo, key_file)
    fresh.load_index()
    requests = _Requests(fresh, manifest.entries[0])
    offset = 0
    for group in content_id_groups(fresh, manifest.entries[0]):
        asked.clear()
        requests.build(group, offset)
        _, packs, recs = fresh.index.columns(group)
        offset += 4096 * len(recs)
        blobs = {
            (requests._path(int(n)), int(r[3]), int(r[4])) for n, r in zip(packs, recs.tolist(), strict=True)
        }
        assert len(asked) < len(blobs)
        for path, at, length in blobs:
            assert any(p == path and s <= at and at + length <= s + ln for p, s, ln in asked)


def test_a_request_longer_than_a_shared_slot_is_hashed_from_the_file_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "pos.db"
    _database(db, 3000)
    repo, key_file = new_repository(tmp_path)
    _, manifest = _backup(repo, db, tmp_path)
    # Every request (a 2 MiB window) is now too long for a slot: each worker writes from its own
    # buffer and the parent reads the file back (directly where it can) for the SHA-256.
    monkeypatch.setattr(restorepool, "SLOT_BYTES", 4096)
    out = tmp_path / "out"
    [restored] = restore_snapshot(reopen(repo, key_file), manifest, out, workers=2)
    assert restored.sha256 == manifest.entries[0].sha256
    assert (out / "pos.db").read_bytes()[100:] == db.read_bytes()[100:]


def test_a_restore_request_for_an_id_in_no_index_names_it_and_says_what_to_run(tmp_path: Path) -> None:
    db = tmp_path / "pos.db"
    _database(db, 2000)
    repo, key_file = new_repository(tmp_path)
    _, manifest = _backup(repo, db, tmp_path)
    fresh = reopen(repo, key_file)
    fresh.load_index()
    group = next(content_id_groups(fresh, manifest.entries[0]))
    unknown = fresh.sealer.blob_id(b"a page no backup stored")
    requests = _Requests(fresh, manifest.entries[0])
    assert sum(plain for _, plain in requests.build(group, 0)) == 4096 * (len(group) // 32)
    with pytest.raises(
        BlobNotFound, match=rf"1 blob\(s\) of pos.db are in no index \(first: {unknown.hex()[:12]}\)"
    ):
        requests.build(group[:64] + unknown + group[64:], 0)
    with pytest.raises(ValueError, match="multiple of 32"):
        requests.build(group + b"\0", 0)


def _items(body: bytes) -> list[tuple]:
    """The open items of a request body built by `_Requests`."""
    (n_paths,) = FRAME.unpack_from(body, 0)
    pos = 4
    for _ in range(n_paths):
        (length,) = FRAME.unpack_from(body, pos)
        pos += 4 + length
    (n,) = FRAME.unpack_from(body, pos)
    return list(OPEN_ITEM.iter_unpack(body[pos + 4 : pos + 4 + n * OPEN_ITEM.size]))


@pytest.mark.parametrize("secure_delete", [False, True])
def test_neighbouring_members_of_a_bundle_go_to_a_worker_as_one_item(
    tmp_path: Path, secure_delete: bool
) -> None:
    db = tmp_path / "pos.db"
    _database(db, 6000, secure_delete=secure_delete)  # with it, equal zeroed pages share one member
    repo, key_file = new_repository(tmp_path)
    _, first = _backup(repo, db, tmp_path)
    images = [db.read_bytes()]
    _edit_rows(db, 6000, every=61)  # a page here and there: bundles of the first backup get holes
    _, second = _backup(repo, db, tmp_path)
    images.append(db.read_bytes())
    fresh = reopen(repo, key_file)
    fresh.load_index()
    for manifest in (first, second):
        entry = manifest.entries[0]
        requests = _Requests(fresh, entry)
        offset = 0
        pages = items = 0
        for group in content_id_groups(fresh, entry):
            _, packs, recs = fresh.index.columns(group)
            # Expected: a new item wherever the next page is not the next member of the same bundle.
            runs = 1 + sum(
                1
                for a, b, pa, pb in zip(
                    recs[:-1].tolist(), recs[1:].tolist(), packs[:-1], packs[1:], strict=True
                )
                if not (
                    a[2] in BUNDLED and b[2] in BUNDLED and pa == pb and a[3] == b[3] and b[6] == a[6] + a[5]
                )
            )
            built = requests.build(group, offset)
            got = [item for body, _ in built for item in _items(body)]
            # Cuts between windows add at most one item a window.
            assert runs <= len(got) <= runs + len(built)
            assert sum(item[6] for item in got) == sum(plain for _, plain in built) == 4096 * len(recs)
            offset += 4096 * len(recs)
            pages += len(recs)
            items += len(got)
        if not secure_delete:
            # 398 pages in 7 items for the first backup here; after the edits, fewer than half.
            assert items * (40 if manifest is first else 2) < pages
    for manifest, image in zip((first, second), images, strict=True):
        out = tmp_path / f"out-{manifest is first}"
        [restored] = restore_snapshot(fresh, manifest, out, workers=2)
        # The second is built on the first's pages: no SHA-256 in its entry, its page ids checked.
        assert manifest.entries[0].sha256 == (restored.sha256 if manifest is first else None)
        assert restored.path.read_bytes()[100:] == image[100:]
