"""An independent reader of the repository format, written from docs/repository-format.md alone.

It imports nothing from Capsule: only the standard library, `cryptography`, `blake3` and `zstandard`.
The real CLI makes a repository; this reader opens it, restores the newest database snapshot and a
files snapshot (folders, links, modes and times) and rebuilds the blob list from the pack headers. It
reads format version 2 (bundles, `CIX2` index files) and version 1 (`CIX1`, no bundles). If the
document leaves something out, this test fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import blake3
import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tests.integration.uploads import describe_tree

CAPSULE = shutil.which("capsule")

NONCE = 12
TAG = 16
PACK_TRAILER = struct.Struct("<I4s")
PACK_ENTRY = struct.Struct("<BBII32s")
INDEX_RECORDS = {b"CIX1": struct.Struct("<32sBBIII"), b"CIX2": struct.Struct("<32sBBIIII")}
U32 = struct.Struct("<I")
VERSIONS = (1, 2)
ALONE = (0, 1)  # compressions of a blob sealed by itself
BUNDLED = (2, 3)  # compressions of a bundle's members (version 2)
BUNDLE_BYTES = 256 * 1024
OPEN_BUNDLES = 8


class FormatError(Exception):
    """The repository breaks a rule of the document."""


# ---- the reader ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    pack: str
    blob_type: int
    compression: int
    offset: int
    length: int
    plain_length: int
    within: int = 0


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def canonical(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def gcm_open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE + TAG:
        raise FormatError("sealed object too short")
    return AESGCM(key).decrypt(sealed[:NONCE], sealed[NONCE:], aad)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def zstd_stream(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


class Reader:
    def __init__(self, root: Path, key_file: Path | None = None, passphrase: str | None = None) -> None:
        self.root = root
        config = json.loads((root / "config").read_bytes())
        if config.get("format") != "capsule-repository" or config.get("version") not in VERSIONS:
            raise FormatError(f"unsupported repository: {config.get('format')} {config.get('version')}")
        self.version: int = config["version"]
        self.repo_id: str = config["id"]
        self._bundles: dict[tuple[str, int], bytes] = {}  # opened bundles, most recently used last
        self.bundles_opened = 0
        master = self._unwrap(key_file, passphrase)
        self.enc_key, self.id_key = master[:32], master[32:]
        body = {k: v for k, v in config.items() if k != "mac"}
        mac = hmac.new(self.id_key, canonical(body), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, bytes.fromhex(config["mac"])):
            raise FormatError("config MAC does not match")
        self.config = config

    def _unwrap(self, key_file: Path | None, passphrase: str | None) -> bytes:
        if key_file is not None:
            kf = json.loads(key_file.read_text())
            assert kf["capsule_key_file"] == 1
            if kf["repository_id"] != self.repo_id:
                raise FormatError("key file belongs to another repository")
            entry = json.loads((self.root / "keys" / kf["key_id"]).read_bytes())
            assert entry["type"] == "key-file"
            return self._open_entry(kf["key_id"], entry, b64(kf["secret"]))
        assert passphrase is not None
        for key_id in names(self.root / "keys"):
            entry = json.loads((self.root / "keys" / key_id).read_bytes())
            if entry["type"] != "passphrase":
                continue
            kdf = entry["kdf"]
            assert kdf["name"] == "scrypt"
            kek = Scrypt(salt=b64(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
                passphrase.encode("utf-8")
            )
            try:
                return self._open_entry(key_id, entry, kek)
            except Exception:
                continue
        raise FormatError("no passphrase entry opens")

    def _open_entry(self, key_id: str, entry: dict[str, object], kek: bytes) -> bytes:
        aad = f"capsule:key:{self.repo_id}:{key_id}".encode("ascii")
        master = gcm_open(kek, b64(str(entry["wrapped"])), aad)
        assert len(master) == 64
        return master

    # sealed files ------------------------------------------------------------------------
    def sealed_file(self, folder: str, name: str) -> bytes:
        stored = (self.root / folder / name).read_bytes()
        if hashlib.sha256(stored).hexdigest() != name:
            raise FormatError(f"{folder}/{name} does not match its name")
        body = gcm_open(self.enc_key, stored, b"capsule:" + folder.encode("ascii"))
        if body[:1] == b"\x01":
            return zstd_stream(body[1:])
        if body[:1] == b"\x00":
            return body[1:]
        raise FormatError("unknown encoding byte")

    def snapshots(self) -> dict[str, dict[str, object]]:
        return {n: json.loads(self.sealed_file("snapshots", n)) for n in names(self.root / "snapshots")}

    def newest_snapshot(self) -> tuple[str, dict[str, object]]:
        snaps = self.snapshots()
        return max(snaps.items(), key=lambda kv: (datetime.fromisoformat(str(kv[1]["time"])), kv[0]))

    # index -------------------------------------------------------------------------------
    def index_files(self) -> dict[str, tuple[list[tuple[str, list[tuple[bytes, Location]]]], list[str]]]:
        out = {}
        for name in names(self.root / "index"):
            data = self.sealed_file("index", name)
            record = INDEX_RECORDS.get(data[:4])
            if record is None:
                raise FormatError("bad index magic")
            (pack_count,) = U32.unpack_from(data, 4)
            pos = 8
            packs = []
            for _ in range(pack_count):
                pack = data[pos : pos + 32].hex()
                (n,) = U32.unpack_from(data, pos + 32)
                pos += 36
                blobs = []
                for _ in range(n):
                    # CIX1 records have no `within`: it is 0.
                    blob_id, btype, comp, offset, length, plain, *within = record.unpack_from(data, pos)
                    pos += record.size
                    blobs.append((blob_id, Location(pack, btype, comp, offset, length, plain, *within)))
                packs.append((pack, blobs))
            (old_count,) = U32.unpack_from(data, pos)
            pos += 4
            old = [data[pos + 32 * i : pos + 32 * (i + 1)].hex() for i in range(old_count)]
            if pos + 32 * old_count != len(data):
                raise FormatError("trailing bytes in index")
            out[name] = (packs, old)
        return out

    def load_index(self) -> dict[bytes, list[Location]]:
        files = self.index_files()
        superseded = {old for _, olds in files.values() for old in olds}
        index: dict[bytes, list[Location]] = {}
        for name, (packs, _) in files.items():
            if name in superseded:
                continue
            for _, blobs in packs:
                for blob_id, loc in blobs:
                    index.setdefault(blob_id, []).append(loc)
        return index

    # packs -------------------------------------------------------------------------------
    def pack_path(self, pack: str) -> Path:
        return self.root / "data" / pack[:2] / pack

    def pack_names(self) -> list[str]:
        out = []
        for sub in names(self.root / "data"):
            out.extend(names(self.root / "data" / sub))
        return sorted(out)

    def pack_header(self, pack: str) -> list[tuple[bytes, Location]]:
        data = self.pack_path(pack).read_bytes()
        if hashlib.sha256(data).hexdigest() != pack:
            raise FormatError("pack does not match its name")
        header_len, magic = PACK_TRAILER.unpack(data[-PACK_TRAILER.size :])
        if magic != b"CPK1" or header_len + PACK_TRAILER.size > len(data):
            raise FormatError("bad pack trailer")
        start = len(data) - PACK_TRAILER.size - header_len
        header = gcm_open(self.enc_key, data[start : start + header_len], b"capsule:pack-header")
        if len(header) % PACK_ENTRY.size:
            raise FormatError("bad header length")
        out: list[tuple[bytes, Location]] = []
        offset = 0
        bundle: Location | None = None  # the first member of the bundle being listed
        within = 0
        for btype, comp, length, plain, blob_id in PACK_ENTRY.iter_unpack(header):
            if length == 0:
                # Only a member of a bundle after its first has no bytes of its own (8.1, 8.2).
                if bundle is None or (bundle.blob_type, bundle.compression) != (btype, comp):
                    raise FormatError("an entry with stored length 0 outside a bundle")
                member = Location(pack, btype, comp, bundle.offset, bundle.length, plain, within)
                out.append((blob_id, member))
                within += plain
                continue
            loc = Location(pack, btype, comp, offset, length, plain)
            out.append((blob_id, loc))
            bundle, within = (loc, plain) if comp in BUNDLED else (None, 0)
            offset += length
        if offset != start:
            raise FormatError("pack sizes do not add up")
        return out

    def index_from_packs(self) -> dict[bytes, list[Location]]:
        index: dict[bytes, list[Location]] = {}
        for pack in self.pack_names():
            for blob_id, loc in self.pack_header(pack):
                index.setdefault(blob_id, []).append(loc)
        return index

    # blobs -------------------------------------------------------------------------------
    def _stored(self, loc: Location) -> bytes:
        with open(self.pack_path(loc.pack), "rb") as f:
            f.seek(loc.offset)
            sealed = f.read(loc.length)
        if len(sealed) != loc.length:
            raise FormatError("blob truncated")
        return sealed

    def bundle_plaintext(self, loc: Location) -> bytes:
        """The plaintext of the bundle that holds the member at `loc`, opened once for its members."""
        if loc.compression not in BUNDLED or self.version < 2:
            raise FormatError("not a bundle member")
        key = (loc.pack, loc.offset)
        plain = self._bundles.pop(key, None)
        if plain is None:
            aad = b"capsule:bundle" + bytes((loc.blob_type, loc.compression))
            payload = gcm_open(self.enc_key, self._stored(loc), aad)
            if loc.compression == 2:
                if zstandard.frame_content_size(payload) < 0:
                    raise FormatError("a bundle's frame does not declare its size")
                plain = zstandard.ZstdDecompressor().decompress(payload)
            else:
                plain = payload
            self.bundles_opened += 1
            while len(self._bundles) >= OPEN_BUNDLES:
                del self._bundles[next(iter(self._bundles))]
        self._bundles[key] = plain
        return plain

    def read_blob(self, blob_id: bytes, loc: Location) -> bytes:
        if loc.compression in BUNDLED:
            bundle = self.bundle_plaintext(loc)
            if loc.within + loc.plain_length > len(bundle):
                raise FormatError("a member lies beyond the end of its bundle")
            plain = bundle[loc.within : loc.within + loc.plain_length]
            if blake3.blake3(plain, key=self.id_key).digest() != blob_id:
                raise FormatError("bundle member does not match its id")
            return plain
        sealed = self._stored(loc)
        aad = b"capsule:blob" + bytes((loc.blob_type, loc.compression)) + blob_id
        payload = gcm_open(self.enc_key, sealed, aad)
        if loc.compression == 1:
            plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=loc.plain_length)
        elif loc.compression == 0:
            plain = payload
        else:
            raise FormatError("unknown compression")
        if len(plain) != loc.plain_length or blake3.blake3(plain, key=self.id_key).digest() != blob_id:
            raise FormatError("blob does not match its id")
        return plain

    def entry_ids(self, entry: dict[str, object], index: dict[bytes, list[Location]]) -> list[bytes]:
        lists = list(entry["blob_lists"])  # type: ignore[call-overload]
        if not lists:
            return [bytes.fromhex(h) for h in entry["blobs"]]  # type: ignore[attr-defined]
        ids: list[bytes] = []
        for hex_id in lists:
            list_id = bytes.fromhex(hex_id)
            loc = index[list_id][0]
            assert loc.blob_type == 1
            body = self.read_blob(list_id, loc)
            if len(body) % 32:
                raise FormatError("list blob length")
            ids.extend(body[i : i + 32] for i in range(0, len(body), 32))
        return ids

    def restore(self, entry: dict[str, object], index: dict[bytes, list[Location]]) -> bytes:
        out = bytearray()
        for blob_id in self.entry_ids(entry, index):
            loc = index[blob_id][0]
            assert loc.blob_type == 0
            out += self.read_blob(blob_id, loc)
        # Section 11.3: a database entry without `sha256` is held to its chunk ids, which
        # `read_blob` compares for every blob.
        if len(out) != entry["size"] or (
            entry["sha256"] is not None and hashlib.sha256(out).hexdigest() != entry["sha256"]
        ):
            raise FormatError("restored file does not match the manifest")
        return bytes(out)

    # Files snapshots (sections 11.5 and 16.2).
    ENTRY_DEFAULTS: dict[str, object] = {  # noqa: RUF012 - read-only table from section 11.2
        "type": "file",
        "size": 0,
        "inode": None,
        "sha256": None,
        "target": None,
        "blobs": [],
        "blob_lists": [],
        "sqlite": None,
    }

    def tree_entries(self, manifest: dict[str, object], index: dict[bytes, list[Location]]) -> list[dict]:
        tree_ids = self.entry_ids({"blob_lists": manifest["tree"], "blobs": []}, index)
        entries: list[dict] = []
        for tree_id in tree_ids:
            loc = index[tree_id][0]
            assert loc.blob_type == 0
            for raw in json.loads(self.read_blob(tree_id, loc)):
                entries.append({**self.ENTRY_DEFAULTS, **raw})
        keys = [e["path"].split("/") for e in entries]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise FormatError("tree entries are not in strictly increasing walk order")
        return entries

    def restore_tree(self, manifest: dict[str, object], index: dict[bytes, list[Location]], to: Path) -> None:
        entries = self.tree_entries(manifest, index)
        links = {e["path"] for e in entries if e["type"] == "symlink"}
        for e in entries:
            parts = e["path"].split("/")
            if e["path"].startswith("/") or ".." in parts or "" in parts:
                raise FormatError("unsafe path")
            if any("/".join(parts[:n]) in links for n in range(1, len(parts))):
                raise FormatError("path through a link")
        for e in entries:
            target = to / e["path"]
            if e["type"] == "dir":
                target.mkdir(parents=True, exist_ok=True)
            elif e["type"] == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.restore(e, index))
                os.chmod(target, e["mode"])
                os.utime(target, ns=(e["mtime_ns"], e["mtime_ns"]))
        for e in entries:
            if e["type"] == "symlink":
                os.symlink(e["target"], to / e["path"])
        for e in sorted(entries, key=lambda e: -e["path"].count("/")):
            if e["type"] == "dir":
                os.chmod(to / e["path"], e["mode"])
                os.utime(to / e["path"], ns=(e["mtime_ns"], e["mtime_ns"]))


# ---- the test --------------------------------------------------------------------------------


def make_database(path: Path, page_size: int, journal_mode: str) -> None:
    rng = random.Random(page_size)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE sales (id INTEGER PRIMARY KEY, note TEXT, receipt BLOB, total INTEGER)")
    rows = []
    for i in range(15000):
        note = f"sale {i} " + "coffee, croissant; " * rng.randint(1, 12)
        receipt = rng.randbytes(rng.randint(0, 300)) if i % 3 == 0 else b""
        rows.append((note, receipt, rng.randint(100, 99_999)))
    conn.executemany("INSERT INTO sales (note, receipt, total) VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()


def change_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sales SET total = total + 1 WHERE id % 97 = 0")
    conn.execute("INSERT INTO sales (note, receipt, total) VALUES ('late sale', x'00ff', 1250)")
    conn.commit()
    conn.close()


def schema_hash(database: bytes, scratch: Path) -> str:
    """SHA-256 of the `sql` texts of `sqlite_master`, sorted, each in UTF-8 followed by a NUL byte."""
    scratch.write_bytes(database)
    conn = sqlite3.connect(f"{scratch.as_uri()}?immutable=1", uri=True)
    try:
        texts = sorted(r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        conn.close()
    return hashlib.sha256(b"".join(t.encode() + b"\x00" for t in texts)).hexdigest()


def backup_api_copy(source: Path, target: Path) -> bytes:
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=-1)
    finally:
        dst.close()
        src.close()
    return target.read_bytes()


def expected_image(source: Path, target: Path, journal_mode: str) -> bytes:
    """Section 11.3: a WAL database is read in place with its WAL folded in; another is copied
    through SQLite's backup API."""
    if journal_mode != "wal":
        return backup_api_copy(source, target)
    conn = sqlite3.connect(source)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    return source.read_bytes()


def logical_dump(data: bytes, scratch: Path) -> list[str]:
    scratch.write_bytes(data)
    conn = sqlite3.connect(f"file:{scratch}?immutable=1", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def capsule(env: dict[str, str], cwd: Path, *args: str) -> str:
    assert CAPSULE is not None
    done = subprocess.run(
        [CAPSULE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"capsule {' '.join(args)}: {done.stderr}"
    return done.stdout


def database_env(tmp_path: Path, db: Path) -> tuple[dict[str, str], Path, Path]:
    """The environment of a capsule command that backs `db` up; (env, repository, capsule home)."""
    repo_dir, home = tmp_path / "backups", tmp_path / "capsule-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSULE_")}
    env |= {
        "CAPSULE_DATABASE": str(db),
        "CAPSULE_REPOSITORY": str(repo_dir),
        "CAPSULE_HOME": str(home),
        "CAPSULE_PACK_SIZE": str(1024 * 1024),  # small packs: several of them
        "CAPSULE_LOG_LEVEL": "warning",
    }
    return env, repo_dir, home


def lone_chunks(backups: list[list[bytes]], index: dict[bytes, list[Location]]) -> set[bytes]:
    """The chunks Capsule seals alone, given the chunk ids of each backup of one database in order.

    Section 6.2: the new chunks of each 1 MiB of the file, each id once and in file order, go into
    bundles of up to 256 KiB of plaintext; a group of one is sealed alone.
    """
    stored: set[bytes] = set()
    lone: set[bytes] = set()
    for ids in backups:
        at = 0
        stretch: list[bytes] = []
        for blob_id in [*ids, None]:
            if blob_id is None or (at and at % (1024 * 1024) == 0):
                new = list(dict.fromkeys(i for i in stretch if i not in stored))
                groups: list[list[bytes]] = []
                size = BUNDLE_BYTES
                for i in new:
                    if size + index[i][0].plain_length > BUNDLE_BYTES:
                        groups.append([])
                        size = 0
                    groups[-1].append(i)
                    size += index[i][0].plain_length
                lone.update(g[0] for g in groups if len(g) == 1)
                stored.update(new)
                stretch = []
            if blob_id is not None:
                stretch.append(blob_id)
                at += index[blob_id][0].plain_length
    return lone


def index_magics(reader: Reader) -> set[bytes]:
    return {reader.sealed_file("index", name)[:4] for name in names(reader.root / "index")}


def read_every_blob(reader: Reader) -> dict[tuple[str, int], list[Location]]:
    """Read and check every blob every pack header lists, as `verify --read-data` does.

    Returns the bundles found, each as its members' locations in header order, after checking what
    sections 6.2, 6.3 and 8 say about them.
    """
    bundles: dict[tuple[str, int], list[Location]] = {}
    for pack in reader.pack_names():
        header = reader.pack_header(pack)
        ids = [blob_id for blob_id, _ in header]
        assert len(set(ids)) == len(ids), f"a blob id appears twice in pack {pack[:12]} (8.3)"
        for blob_id, loc in header:
            reader.read_blob(blob_id, loc)  # authenticates it and checks its id
            if loc.compression in BUNDLED:
                bundles.setdefault((pack, loc.offset), []).append(loc)
    for members in bundles.values():
        assert len(members) >= 2, "a lone chunk is sealed as an ordinary blob"
        assert len({(m.blob_type, m.compression, m.length) for m in members}) == 1
        lengths = [m.plain_length for m in members]
        assert [m.within for m in members] == [sum(lengths[:k]) for k in range(len(members))]
        assert sum(lengths) == len(reader.bundle_plaintext(members[0])) <= BUNDLE_BYTES
    return bundles


@pytest.mark.skipif(CAPSULE is None, reason="the capsule command is not installed")
@pytest.mark.parametrize(("page_size", "journal_mode"), [(4096, "wal"), (1024, "delete")])
def test_independent_reader_restores_the_newest_snapshot(
    tmp_path: Path, page_size: int, journal_mode: str
) -> None:
    db = tmp_path / "shop" / "pos.db"
    db.parent.mkdir()
    make_database(db, page_size, journal_mode)
    env, repo_dir, home = database_env(tmp_path, db)
    passphrase_file = tmp_path / "passphrase.txt"
    passphrase_file.write_text("a long shop passphrase\n")
    capsule(env, tmp_path, "init", "--passphrase-file", str(passphrase_file))
    capsule(env, tmp_path, "backup", "--kind", "database")
    change_database(db)
    last = json.loads(capsule(env, tmp_path, "backup", "--kind", "database", "--json"))
    expected = expected_image(db, tmp_path / "reference.db", journal_mode)

    reader = Reader(repo_dir, key_file=home / "repository.key")
    assert Reader(repo_dir, passphrase="a long shop passphrase").enc_key == reader.enc_key
    assert reader.config["version"] == 2, "new repositories are version 2"
    assert index_magics(reader) == {b"CIX2"}

    snapshot_id, manifest = reader.newest_snapshot()
    assert snapshot_id == last["snapshot_id"]
    # Built on its parent's pages: version 3, no SHA-256 of the whole file (section 11.3).
    assert manifest["version"] == 3 and manifest["kind"] == "database"
    (entry,) = manifest["entries"]  # type: ignore[misc]
    assert entry["sha256"] is None
    sqlite_info = entry["sqlite"]
    assert sqlite_info["page_size"] == page_size
    assert sqlite_info["pages_per_chunk"] == max(1, 4096 // page_size)
    assert sqlite_info["journal_mode"] == journal_mode
    assert entry["blob_lists"] and not entry["blobs"], "the database should need list blobs"

    index = reader.load_index()
    restored = reader.restore(entry, index)
    assert restored == expected
    assert logical_dump(restored, tmp_path / "check.db") == logical_dump(expected, tmp_path / "ref2.db")
    # Section 11.1.1: the source's identity, its schema hash worked out from the restored database.
    identity = manifest["identity"]
    assert identity["path"] == str(db.resolve()) == manifest["source"]  # type: ignore[index]
    assert identity["page_size"] == page_size and identity["application_id"] == 0  # type: ignore[index]
    assert identity["schema_sha256"] == schema_hash(restored, tmp_path / "schema.db")  # type: ignore[index]

    chunk = page_size * sqlite_info["pages_per_chunk"]
    ids = reader.entry_ids(entry, index)
    assert len(ids) == -(-len(restored) // chunk)
    # Sections 6.2 and 11.3. List blobs are sealed alone and uncompressed (0). The chunks of this
    # database (4 KiB: text notes and a few random receipts) are all new in the first backup, and
    # the second stores the 150-odd chunks that changed (every 97th sale), about 50 in each MiB of
    # the file: the sealing workers put them in bundles of up to 64, and zstd shrinks every bundle
    # of text pages by far more than 3 % (2, never 3). Only a chunk left alone in its 1 MiB stretch
    # would be sealed by itself, compressed (1): work out which, if any, from the two backups' ids.
    first = min(reader.snapshots().values(), key=lambda m: datetime.fromisoformat(str(m["time"])))
    lone = lone_chunks([reader.entry_ids(first["entries"][0], index), ids], index)  # type: ignore[index]
    by_type: dict[int, set[int]] = {}
    for locs in index.values():
        by_type.setdefault(locs[0].blob_type, set()).add(locs[0].compression)
    assert by_type == {0: {2} | ({1} if lone else set()), 1: {0}}
    assert {loc[0].compression for loc in index.values()} == {0, 2} | ({1} if lone else set())
    alone = {i for i, locs in index.items() if locs[0].blob_type == 0 and locs[0].compression in ALONE}
    assert alone == lone
    assert len(set(ids) - lone) >= 0.95 * len(set(ids)), "almost every chunk is a bundle member"
    assert len(reader.pack_names()) > 1 and len(names(repo_dir / "index")) == 2

    # The same blobs, at the same places (offsets, stored lengths and `within`), from the pack
    # headers alone.
    from_packs = reader.index_from_packs()
    assert from_packs == index
    assert reader.restore(entry, from_packs) == expected
    assert any(loc.within for locs in from_packs.values() for loc in locs)
    bundles = read_every_blob(reader)
    assert max(len(m) for m in bundles.values()) == BUNDLE_BYTES // chunk
    # A restore opens each bundle it needs once, for all of its members (6.3).
    fresh = Reader(repo_dir, key_file=home / "repository.key")
    assert fresh.restore(entry, index) == expected
    needed = {(index[i][0].pack, index[i][0].offset) for i in ids if index[i][0].compression in BUNDLED}
    assert fresh.bundles_opened == len(needed)

    # And Capsule's own restore and verify agree with this reader.
    capsule(env, tmp_path, "restore", "latest", "--to", str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "pos.db").read_bytes() == restored
    capsule(env, tmp_path, "verify", "--read-data")


def make_version_1_repository(env: dict[str, str], cwd: Path, repo_dir: Path, key_file: Path) -> None:
    """`capsule init` makes version 2; turn it into an empty version 1 repository.

    Sections 4 and 5: the key comes from the key file; the config's `mac` is HMAC-SHA256 under the id
    key over the canonical JSON of every other member.
    """
    capsule(env, cwd, "init")
    id_key = Reader(repo_dir, key_file=key_file).id_key
    config = json.loads((repo_dir / "config").read_bytes())
    assert config["version"] == 2
    config["version"] = 1
    body = {k: v for k, v in config.items() if k != "mac"}
    config["mac"] = hmac.new(id_key, canonical(body), hashlib.sha256).hexdigest()
    (repo_dir / "config").write_text(json.dumps(config, indent=2) + "\n")


@pytest.mark.skipif(CAPSULE is None, reason="the capsule command is not installed")
def test_a_version_1_repository_is_still_read_and_written_in_version_1_form(tmp_path: Path) -> None:
    db = tmp_path / "shop" / "pos.db"
    db.parent.mkdir()
    make_database(db, 4096, "wal")
    env, repo_dir, home = database_env(tmp_path, db)
    key_file = home / "repository.key"
    make_version_1_repository(env, tmp_path, repo_dir, key_file)
    capsule(env, tmp_path, "backup", "--kind", "database")
    change_database(db)
    last = json.loads(capsule(env, tmp_path, "backup", "--kind", "database", "--json"))
    expected = expected_image(db, tmp_path / "reference.db", "wal")

    reader = Reader(repo_dir, key_file=key_file)
    assert reader.config["version"] == 1, "Capsule must not change a repository's version"
    # Version 1 form (sections 4, 10.1 and 17): CIX1 index files, no bundles anywhere.
    assert len(names(repo_dir / "index")) == 2 and index_magics(reader) == {b"CIX1"}
    index = reader.load_index()
    from_packs = reader.index_from_packs()
    assert from_packs == index
    assert {loc.compression for locs in from_packs.values() for loc in locs} == {0, 1}
    assert not any(loc.within for locs in from_packs.values() for loc in locs)
    assert read_every_blob(reader) == {}

    snapshot_id, manifest = reader.newest_snapshot()
    assert snapshot_id == last["snapshot_id"]
    (entry,) = manifest["entries"]  # type: ignore[misc]
    assert reader.restore(entry, index) == expected
    assert reader.restore(entry, from_packs) == expected

    capsule(env, tmp_path, "restore", "latest", "--to", str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "pos.db").read_bytes() == expected
    capsule(env, tmp_path, "verify", "--read-data")


def make_images(root: Path) -> None:
    rng = random.Random(7)
    for folder in ("shoes", "shoes/red", "hats", "empty"):
        (root / folder).mkdir(parents=True)
    for n in range(150):  # enough entries for several tree blobs
        folder = ("shoes", "shoes/red", "hats")[n % 3]
        size = rng.choice((40, 3000, 300_000, 1_500_000))
        (root / folder / f"item-{n:03d}.jpg").write_bytes(b"\xff\xd8\xff" + rng.randbytes(size))
    (root / "notes.txt").write_text("sizes and colours\n" * 500)
    (root / "hats" / "item-002.jpg").chmod(0o600)
    os.symlink("shoes/item-000.jpg", root / "cover.jpg")
    (root / "shoes" / "red").chmod(0o750)
    os.utime(root / "shoes" / "red", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


@pytest.mark.skipif(CAPSULE is None, reason="the capsule command is not installed")
def test_independent_reader_restores_a_files_snapshot(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    make_images(uploads)
    repo_dir, home = tmp_path / "backups", tmp_path / "capsule-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSULE_")}
    env |= {
        "CAPSULE_UPLOADS": str(uploads),
        "CAPSULE_DATABASE": str(tmp_path / "pos.db"),
        "CAPSULE_REPOSITORY": str(repo_dir),
        "CAPSULE_HOME": str(home),
        "CAPSULE_PACK_SIZE": str(1024 * 1024),
        "CAPSULE_LOG_LEVEL": "warning",
    }
    capsule(env, tmp_path, "init")
    made = json.loads(capsule(env, tmp_path, "backup", "--kind", "files", "--json"))
    reader = Reader(repo_dir, key_file=home / "repository.key")
    snapshot_id, manifest = reader.newest_snapshot()
    assert snapshot_id == made["snapshot_id"]
    assert manifest["version"] == 2 and manifest["kind"] == "files" and manifest["entries"] == []
    identity = manifest["identity"]  # section 11.1.1: a folder has a host and a path, nothing of SQLite
    assert identity["path"] == manifest["source"] and identity["host"] == manifest["hostname"]  # type: ignore[index]
    assert (identity["application_id"], identity["schema_sha256"]) == (None, None)  # type: ignore[index]
    index = reader.load_index()
    entries = reader.tree_entries(manifest, index)
    assert len(reader.entry_ids({"blob_lists": manifest["tree"], "blobs": []}, index)) > 1
    by_path = {e["path"]: e for e in entries}
    assert (
        by_path["cover.jpg"]["type"] == "symlink" and by_path["cover.jpg"]["target"] == "shoes/item-000.jpg"
    )
    # Section 6.2: JPEG chunks are stored as they are, the text file compressed.
    jpeg_ids = [bytes.fromhex(b) for e in entries if e["path"].endswith(".jpg") for b in e["blobs"]]
    assert jpeg_ids and {index[i][0].compression for i in jpeg_ids} == {0}
    (text_id,) = by_path["notes.txt"]["blobs"]
    assert index[bytes.fromhex(text_id)][0].compression == 1

    reader.restore_tree(manifest, index, tmp_path / "by-reader")
    assert describe_tree(tmp_path / "by-reader") == describe_tree(uploads)
    capsule(env, tmp_path, "restore", snapshot_id, "--to", str(tmp_path / "by-capsule"))
    assert describe_tree(tmp_path / "by-capsule") == describe_tree(uploads)


# ---- the example of section 8.1, built by hand ------------------------------------------------


def seal(key: bytes, payload: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, payload, aad)


def write_pack(
    reader: Reader, entries: list[tuple[int, int, int, int, bytes]], objects: list[bytes]
) -> tuple[str, bytes]:
    """A pack of `objects` (sealed blobs and bundles) whose header lists `entries`; (name, bytes)."""
    header = seal(reader.enc_key, b"".join(PACK_ENTRY.pack(*e) for e in entries), b"capsule:pack-header")
    data = b"".join(objects) + header + PACK_TRAILER.pack(len(header), b"CPK1")
    name = hashlib.sha256(data).hexdigest()
    reader.pack_path(name).parent.mkdir(parents=True, exist_ok=True)
    reader.pack_path(name).write_bytes(data)
    return name, data


def bare_reader(root: Path, enc_key: bytes, id_key: bytes) -> Reader:
    """A reader of a version 2 repository at `root` with these keys, with no config or key file."""
    reader = Reader.__new__(Reader)
    reader.root, reader.version, reader._bundles, reader.bundles_opened = root, 2, {}, 0
    reader.enc_key, reader.id_key = enc_key, id_key
    return reader


def test_reader_reads_a_blob_then_a_bundle_of_three_as_section_8_1_shows(tmp_path: Path) -> None:
    reader = bare_reader(tmp_path, os.urandom(32), os.urandom(32))

    def blob_id(plain: bytes) -> bytes:
        return blake3.blake3(plain, key=reader.id_key).digest()

    a = os.urandom(1206)  # sealed alone, uncompressed: 1234 bytes stored
    b, c, d = b"page B " * 585 + b"b", b"page C " * 585 + b"c", b"page D " * 292 + b"dddd"
    assert (len(a), len(b), len(c), len(d)) == (1206, 4096, 4096, 2048)
    ids = [blob_id(p) for p in (a, b, c, d)]
    sealed_a = seal(reader.enc_key, a, b"capsule:blob\x00\x00" + ids[0])
    frame = zstandard.ZstdCompressor().compress(b + c + d)  # declares its content size
    bundle = seal(reader.enc_key, frame, b"capsule:bundle\x00\x02")
    entries = [
        (0, 0, len(sealed_a), len(a), ids[0]),
        (0, 2, len(bundle), len(b), ids[1]),
        (0, 2, 0, len(c), ids[2]),
        (0, 2, 0, len(d), ids[3]),
    ]
    name, data = write_pack(reader, entries, [sealed_a, bundle])
    assert len(sealed_a) == 1234 and data[-8:] == bytes.fromhex("c4000000 43504b31")
    assert len(data) == 1234 + len(bundle) + (42 * 4 + 28) + 8
    header = reader.pack_header(name)
    assert [blob for blob, _ in header] == ids
    assert [(loc.offset, loc.length, loc.plain_length, loc.within) for _, loc in header] == [
        (0, 1234, 1206, 0),
        (1234, len(bundle), 4096, 0),
        (1234, len(bundle), 4096, 4096),
        (1234, len(bundle), 2048, 8192),
    ]
    assert [reader.read_blob(i, loc) for i, loc in header] == [a, b, c, d]
    assert reader.bundles_opened == 1 and len(reader.bundle_plaintext(header[3][1])) == 10_240

    # Section 6.3: each member's id is checked on its own bytes; a member cannot reach past its bundle.
    fresh = bare_reader(tmp_path, reader.enc_key, reader.id_key)
    with pytest.raises(FormatError, match="does not match its id"):
        fresh.read_blob(ids[2], header[3][1])
    with pytest.raises(FormatError, match="beyond the end"):
        fresh.read_blob(ids[3], replace(header[3][1], plain_length=4096))
    # The tag covers the type and the compression.
    for wrong in (replace(header[1][1], compression=3), replace(header[1][1], blob_type=1)):
        with pytest.raises(InvalidTag):
            bare_reader(tmp_path, reader.enc_key, reader.id_key).read_blob(ids[1], wrong)

    # Section 8.2: an entry with stored length 0 that is not a later member of a bundle.
    for bad in (
        [(0, 2, 0, len(b), ids[1]), *entries[2:]],  # no bundle started
        [entries[0], (0, 2, 0, len(b), ids[1])],  # after a blob sealed alone
        [*entries[:2], (0, 0, 0, len(c), ids[2])],  # compression 0
        [*entries[:2], (0, 3, 0, len(c), ids[2])],  # another compression
        [*entries[:2], (1, 2, 0, len(c), ids[2])],  # another type
    ):
        name, _ = write_pack(reader, bad, [sealed_a, bundle])
        with pytest.raises(FormatError, match="stored length 0"):
            reader.pack_header(name)
