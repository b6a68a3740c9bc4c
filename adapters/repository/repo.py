"""The repository: open it with a key, store blobs in packs, read them back authenticated.

Write order makes a crash harmless: packs first, then the index files that name them, then the
snapshot that needs them. A crash leaves at worst packs no index names yet; `rebuild-index` adopts
them and they are never half-written (every file is written to a temporary name and renamed).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import zstandard

from capsule.adapters.errors import (
    NOT_INDEXED_ADVICE,
    BlobNotFound,
    IntegrityError,
    KeyFileMissing,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
    WrongKey,
)
from capsule.adapters.logs import get_logger
from capsule.adapters.repository.backends.storage import Backend, Kind, write_parts
from capsule.adapters.repository.blobcodec import decode_blob, decode_bundle, encode_blob, member
from capsule.adapters.repository.crypto import ID_SIZE, MasterKey, Sealer
from capsule.adapters.repository.keys import (
    add_key_file,
    add_passphrase_key,
    open_with_key_file,
    open_with_passphrase,
)
from capsule.adapters.repository.pack import BLOB_LIST, BUNDLED, PackBuilder
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import READABLE_MANIFEST_VERSIONS, Manifest
from capsule.domain.sizes import DEFAULT_PACK_SIZE

if TYPE_CHECKING:
    # numpy and the index load when the index is first used: listing snapshots needs neither.
    import numpy as np
    import numpy.typing as npt

    from capsule.adapters.repository import indexcache
    from capsule.adapters.repository.index import BlobLocation, Index

log = get_logger(__name__)

UNREADABLE_SNAPSHOT = (IntegrityError, UnsupportedVersion, UnsafePath)
"""What loading a manifest raises when that one snapshot cannot be used: it fails authentication,
its JSON or its paths are refused, or a newer Capsule wrote it."""


@dataclass(frozen=True)
class UnreadableSnapshot:
    """A snapshot whose manifest cannot be read, and the one sentence that says why."""

    name: str
    reason: str


REPOSITORY_FORMAT = "capsule-repository"
REPOSITORY_VERSION = 2
# Version 1 has no bundles (see pack.py); it is still read, and written without them.
READABLE_VERSIONS = (1, 2)
INDEX_FLUSH_BLOBS = 200_000
# Index records kept decoded between the two passes of load_index, when a file that supersedes
# others makes it take two (about 3 MB per 65,536).
LOAD_HOLD = 262_144
# On 4 KiB database pages level 1 compresses about as well as level 3 in less time
# (see docs/performance.md, "zstd level 1 for database pages").
DEFAULT_COMPRESSION_LEVEL = 1
# Packs being written (and fsynced) in the background while the next one fills.
PACKS_IN_FLIGHT = 2


PackReader = Callable[[str, int, int], bytes]
"""Reads `length` bytes at `offset` of pack `pack_id`, as `Backend.read` of a `data` object does."""


class PreparedBlob(NamedTuple):
    """A blob sealed and ready for a pack; made off the main thread."""

    blob_id: bytes
    blob_type: int
    compression: int
    sealed: bytes
    plain_length: int


class Repository:
    """An open repository: config checked, master key unwrapped, index loaded on demand."""

    def __init__(self, backend: Backend, config: dict[str, Any], key: MasterKey) -> None:
        self.backend = backend
        self.config = config
        self.id: str = config["id"]
        self.version: int = int(config["version"])
        self.bundles = self.version >= 2
        """Whether small blobs may be sealed together in bundles (not in version 1)."""
        self.sealer = Sealer(key)
        self.master_key = key
        self.pack_size: int = int(config.get("pack_size", DEFAULT_PACK_SIZE))
        self.compression_level: int = int(config.get("compression_level", DEFAULT_COMPRESSION_LEVEL))
        self._index: Index | None = None
        self._index_loaded = False
        self.cache_dir: Path | None = None
        """Where the index cache is kept (see indexcache); None for none."""
        self._indexed_files: set[str] = set()  # index files whose records the index holds
        self._superseded_files: set[str] = set()
        self._builder = PackBuilder()
        self._list_builder = PackBuilder()
        """List blobs go into packs of their own (see `add`)."""
        self._unindexed: dict[str, npt.NDArray[np.void]] = {}
        # Ids in the open pack or a pack being written: already "stored" for dedup, not yet indexed.
        self._pending_ids: set[bytes] = set()
        self._writer: ThreadPoolExecutor | None = None
        self._writes: deque[tuple[Future[tuple[str, int]], PackBuilder]] = deque()
        self._local = threading.local()
        self.stored_bytes = 0
        self.blobs_opened = 0
        """Blobs (bundle members included) this process has opened from this repository: how
        much of it a command read, for its log and its tests."""
        self._count_lock = threading.Lock()
        self._pack_reader: PackReader | None = None

    @property
    def index(self) -> Index:
        if self._index is None:
            from capsule.adapters.repository.index import Index  # noqa: PLC0415

            self._index = Index()
        return self._index

    @index.setter
    def index(self, index: Index) -> None:
        self._index = index

    def adopt_index(self, index: Index) -> None:
        """Take `index` as this repository's loaded index: one this process loaded from the very
        files the repository holds now (prune's plan, reused by its repack)."""
        self._index = index
        self._index_loaded = True

    # ---- creating and opening -------------------------------------------------------------
    @classmethod
    def init(
        cls,
        backend: Backend,
        key_file: Path,
        passphrase: str | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> Repository:
        if backend.exists("config", "config"):
            raise RepositoryExists(f"a repository already exists at {backend.describe()}")
        if key_file.exists():
            raise RepositoryExists(
                f"a key file already exists at {key_file}; move it away first (it may be the only "
                "key to another repository)"
            )
        backend.create_layout()
        master = MasterKey.generate()
        config: dict[str, Any] = {
            "format": REPOSITORY_FORMAT,
            "version": REPOSITORY_VERSION,
            "id": os.urandom(32).hex(),
            "created": datetime.now(UTC).isoformat(),
            "pack_size": pack_size,
            "compression_level": DEFAULT_COMPRESSION_LEVEL,
        }
        sealer = Sealer(master)
        config["mac"] = sealer.mac(_canonical(config)).hex()
        key_id = add_key_file(backend, master, config["id"], key_file)
        if passphrase:
            add_passphrase_key(backend, master, config["id"], passphrase)
        backend.write("config", "config", json.dumps(config, indent=2).encode() + b"\n")
        log.info("repository created", repository=backend.describe(), key_id=key_id[:12])
        return cls(backend, config, master)

    @classmethod
    def open(cls, backend: Backend, key_file: Path | None, passphrase: str | None = None) -> Repository:
        config = read_config(backend)
        master = None
        refused: WrongKey | None = None
        if key_file is not None and key_file.exists():
            try:
                master = open_with_key_file(backend, config["id"], key_file)
            except WrongKey as e:
                if not passphrase:
                    raise
                refused = e
        if master is None and passphrase:
            try:
                master = open_with_passphrase(backend, config["id"], passphrase)
            except WrongKey as e:
                if refused is None:
                    raise
                raise WrongKey(f"the passphrase does not open this repository, and {refused}") from e
        if master is None and key_file is not None:
            raise KeyFileMissing(
                f"the key file {key_file} is missing; restore it from your safe copy, or give the "
                "repository's passphrase (CAPSULE_PASSPHRASE)"
            )
        if master is None:
            raise WrongKey("no key was given to open the repository")
        try:
            claimed = bytes.fromhex(str(config.get("mac", "")))
        except ValueError:
            claimed = b""
        body = {k: v for k, v in config.items() if k != "mac"}
        if not _hmac_equal(Sealer(master).mac(_canonical(body)), claimed):
            raise IntegrityError("the repository's config file was altered or damaged")
        return cls(backend, config, master)

    # ---- sealed files (index, snapshots) -------------------------------------------------
    def save_sealed(self, kind: Kind, payload: bytes) -> str:
        body = b"\x01" + zstandard.ZstdCompressor(level=self.compression_level).compress(payload)
        stored = self.sealer.seal(body, b"capsule:" + kind.encode())
        name = hashlib.sha256(stored).hexdigest()
        self.backend.write(kind, name, stored)
        return name

    def load_sealed(self, kind: Kind, name: str) -> bytes:
        try:
            stored = self.backend.read(kind, name)
        except ObjectNotFound as e:
            raise IntegrityError(f"{kind} file {name[:12]} is missing") from e
        what = f"{kind} file {name[:12]}"
        if hashlib.sha256(stored).hexdigest() != name:
            raise IntegrityError(f"{what} does not match its name: it was damaged")
        body = self.sealer.open(stored, b"capsule:" + kind.encode(), what)
        if body[:1] == b"\x01":
            return _decompress(body[1:], what)
        if body[:1] == b"\x00":
            return body[1:]
        raise IntegrityError(f"{what} has an unknown encoding")

    # ---- blobs ---------------------------------------------------------------------------
    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.compression_level)
        return c

    def prepare(
        self, blob_type: int, data: bytes, blob_id: bytes | None = None, compress: bool = True
    ) -> PreparedBlob:
        """Seal one blob (thread-safe: run many at once)."""
        if blob_id is None:
            blob_id = self.sealer.blob_id(data)
        compression, sealed = encode_blob(
            self.sealer, self._compressor() if compress else None, blob_type, blob_id, data
        )
        return PreparedBlob(blob_id, blob_type, compression, sealed, len(data))

    def add(self, blob: PreparedBlob, has_blob: Callable[[bytes], bool] | None = None) -> bool:
        """Put a prepared blob into the current pack unless the repository has it; True if new.

        `has_blob` replaces the usual "is it indexed or pending" test (a full backup also wants
        the pack to exist).
        """
        if (has_blob or self.has_blob)(blob.blob_id):
            return False
        # A snapshot's list blobs live and die with it, and with the snapshots that share them;
        # its data blobs live on in the snapshots after it. Kept apart, a forgotten snapshot's
        # lists leave a pack unused whole (deleted, not repacked), and its data's packs are not
        # pushed past the repack threshold by them (repository format, section 14).
        lists = blob.blob_type == BLOB_LIST
        builder = self._list_builder if lists else self._builder
        builder.add(blob.blob_id, blob.blob_type, blob.compression, blob.sealed, blob.plain_length)
        self._pending_ids.add(blob.blob_id)
        if builder.size >= self.pack_size:
            self._write_pack(lists=lists)
        return True

    def add_run(
        self,
        blob_ids: list[bytes],
        header: bytes | memoryview,
        sealed: memoryview,
        has_blob: Callable[[bytes], bool] | None = None,
        *,
        index_generation: int | None = None,
    ) -> tuple[int, int]:
        """Add blobs sealed end to end (as a worker returns them, with their pack-header entries);
        return (blobs, plain bytes) added.

        The common case, none known yet, moves the whole run into the pack at once. Pass the index
        generation seen when the ids were looked up: if nothing was merged since, only the open
        pack and this run's packs need checking again.
        """
        import numpy as np  # noqa: PLC0415

        from capsule.adapters.repository.index import HEADER_DTYPE  # noqa: PLC0415

        entries = np.frombuffer(header, dtype=HEADER_DTYPE)
        if len(set(blob_ids)) == len(blob_ids) and self._none_known(blob_ids, has_blob, index_generation):
            return self._add_whole_run(blob_ids, header, sealed, len(blob_ids), int(entries["plain"].sum()))
        if np.isin(entries["comp"], BUNDLED).any():
            # A bundle cannot be split: store the run as it is. Members stored already (another
            # backup got there first) are counted as known and simply stored twice; the index
            # finds either copy, and a prune can drop one.
            known = [has_blob(i) for i in blob_ids] if has_blob else self.known_many(blob_ids)
            fresh = {i for i, k in zip(blob_ids, known, strict=True) if not k}
            plain = sum(int(p) for i, p in zip(blob_ids, entries["plain"], strict=True) if i in fresh)
            if not self._builder_free_of(blob_ids):
                self._write_pack()  # a pack lists an id at most once: start the next one
            return self._add_whole_run(blob_ids, header, sealed, len(fresh), plain)
        added = plain_bytes = 0
        at = 0
        for blob_id, (btype, comp, length, plain, _) in zip(blob_ids, entries.tolist(), strict=True):
            blob = PreparedBlob(blob_id, btype, comp, bytes(sealed[at : at + length]), plain)
            at += length
            if self.add(blob, has_blob):
                added += 1
                plain_bytes += plain
        return added, plain_bytes

    def _add_whole_run(
        self, blob_ids: list[bytes], header: bytes | memoryview, sealed: memoryview, added: int, plain: int
    ) -> tuple[int, int]:
        self._builder.add_run(header, sealed)
        self._pending_ids.update(blob_ids)
        if self._builder.size >= self.pack_size:
            self._write_pack()
        return added, plain

    def _builder_free_of(self, blob_ids: list[bytes]) -> bool:
        return self._pending_ids.isdisjoint(blob_ids) or set(self._builder.ids()).isdisjoint(blob_ids)

    def _none_known(
        self, blob_ids: list[bytes], has_blob: Callable[[bytes], bool] | None, generation: int | None
    ) -> bool:
        if has_blob is not None:
            return not any(has_blob(i) for i in blob_ids)
        if generation is not None and generation == self.index.generation:
            return self._pending_ids.isdisjoint(blob_ids) and self.index.none_recent(blob_ids)
        return not any(self.has_blob(i) for i in blob_ids)

    def known_many(self, blob_ids: list[bytes]) -> list[bool]:
        """For each id: is it indexed in a pack that is there, or in a pack being written?"""
        pending = self._pending_ids
        in_index = self.index.contains_many(blob_ids)
        return [k or i in pending for k, i in zip(in_index, blob_ids, strict=True)]

    def known_joined(self, ids: bytes) -> npt.NDArray[np.bool_]:
        """`known_many` for ids end to end, as an array, in one search of the index."""
        import numpy as np  # noqa: PLC0415

        known = self.index.contains_joined(ids)
        if self._pending_ids:
            pending = self._pending_ids
            for i in np.flatnonzero(~known).tolist():
                known[i] = ids[i * ID_SIZE : (i + 1) * ID_SIZE] in pending
        return known

    def pending_blob(self, blob_id: bytes) -> bool:
        """True if the blob sits in the open pack, not yet written."""
        return blob_id in self._pending_ids

    def has_blob(self, blob_id: bytes) -> bool:
        """Whether a backup may name the blob without storing it: a blob whose only copy is in a
        pack that was missing when the index was loaded (one listing of the packs) is stored again."""
        return blob_id in self._pending_ids or self.index.contains(blob_id)

    def _write_pack(self, *, lists: bool = False) -> None:
        """Hand the open pack (of data, or of lists) to the writer thread; its blobs stay pending
        until it is stored."""
        builder = self._list_builder if lists else self._builder
        if not len(builder):
            return
        if lists:
            self._list_builder = PackBuilder()
        else:
            self._builder = PackBuilder()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-writer")
        self._writes.append((self._writer.submit(self._store_pack, builder), builder))
        while len(self._writes) > PACKS_IN_FLIGHT:
            self._finish_pack()

    def _store_pack(self, builder: PackBuilder) -> tuple[str, int]:
        pack_id, parts = builder.finish_parts(self.sealer)
        write_parts(self.backend, "data", pack_id, parts)  # from its pieces: no joined copy
        return pack_id, sum(len(p) for p in parts)

    def _finish_pack(self) -> None:
        from capsule.adapters.repository.index import header_records  # noqa: PLC0415

        future, builder = self._writes.popleft()
        pack_id, size = future.result()
        self.stored_bytes += size
        recs = self._unindexed[pack_id] = header_records(builder.header)
        self.index.add_pack(pack_id, recs)
        self._pending_ids.difference_update(builder.ids())
        if sum(len(v) for v in self._unindexed.values()) >= INDEX_FLUSH_BLOBS:
            self._write_index()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        name = self.save_index_file(self._unindexed)
        self.stored_bytes += self.backend.size("index", name)
        self._unindexed = {}

    def save_index_file(self, packs: dict[str, npt.NDArray[np.void]]) -> str:
        """Store an index file for `packs`, which this process's index holds (or is about to)."""
        from capsule.adapters.repository.index import encode_index  # noqa: PLC0415

        name = self.save_sealed("index", encode_index(packs, version=self.version))
        self._indexed_files.add(name)
        return name

    def flush(self) -> None:
        """Store the open packs and an index for every pack not yet indexed."""
        self._write_pack()
        self._write_pack(lists=True)
        while self._writes:
            self._finish_pack()
        self._write_index()

    def load_index(self, *, use_cache: bool = True) -> list[str]:
        """Read the index; return the names of index files that failed (already logged).

        With a cache folder set and `use_cache`, the index built last time is read back from the
        cache (see indexcache) and only index files written since are decoded; then the cache is
        brought up to date. Without, every index file is read.
        """
        from capsule.adapters.repository.index import Index, decode_index  # noqa: PLC0415

        names = sorted(self.backend.list("index"))
        # A blob can sit in several packs (a full backup stored it again after its pack was lost):
        # the index prefers packs that are on disk.
        on_disk = set(self.backend.list("data"))
        cached = self._read_index_cache(set(names), on_disk) if use_cache else None
        one_pass = self._index_in_one_pass(names, on_disk) if cached is None else None
        if one_pass is not None:
            self.index, damaged, fresh, superseded = one_pass
        else:
            known = cached.covered | cached.skipped if cached is not None else frozenset()
            damaged, readable, superseded, held = self._scan_index_files([n for n in names if n not in known])
            if cached is not None and superseded & cached.covered:
                log.info("index cache superseded by a newer index file; reading every index file")
                cached = None
                damaged, readable, superseded, held = self._scan_index_files(names)
            self.index = cached.index if cached is not None else Index()
            fresh = [n for n in readable if n not in superseded]
            for name in fresh:
                packs = held.pop(name, None)
                if packs is None:
                    try:
                        packs, _ = decode_index(self.load_sealed("index", name), name)
                    except IntegrityError as e:  # changed on disk since the first pass
                        log.error("index file unreadable", index=name[:12], error=str(e))
                        damaged.append(name)
                        continue
                for pack_id, recs in packs:
                    self.index.stage(pack_id, recs, gone=pack_id not in on_disk)
        self.index.freeze()
        self._index_loaded = True
        self._indexed_files = set(cached.covered if cached is not None else ()) | {
            n for n in fresh if n not in damaged
        }
        skipped = cached.skipped if cached is not None else frozenset()
        self._superseded_files = superseded.intersection(names) | skipped
        if use_cache and (cached is None or fresh):
            self.save_index_cache()
        return damaged

    def decoded_index_files(
        self, names: Iterable[str], damaged: list[str]
    ) -> Iterator[tuple[str, list[tuple[str, npt.NDArray[np.void]]], list[str]]]:
        """(name, its packs' records, the files it supersedes) of each index file named, read in
        turn; one that cannot be read is logged and added to `damaged` instead."""
        from capsule.adapters.repository.index import decode_index  # noqa: PLC0415

        for name in names:
            try:
                packs, old = decode_index(self.load_sealed("index", name), name)
            except IntegrityError as e:
                log.error("index file unreadable", index=name[:12], error=str(e))
                damaged.append(name)
                continue
            yield name, packs, old

    def _index_in_one_pass(
        self, names: list[str], on_disk: set[str]
    ) -> tuple[Index, list[str], list[str], set[str]] | None:
        """(index, damaged, files staged, names superseded): every index file read once and its
        records staged as it is read; None if a file staged turned out superseded by one read
        after it, for the two passes of `_scan_index_files` to do.

        A file supersedes others only when a prune or a repair writes the index anew, and those
        remove the superseded files once it is stored: a repository seldom holds both, so most
        loads decode each file once instead of twice for all but the first LOAD_HOLD records."""
        from capsule.adapters.repository.index import Index  # noqa: PLC0415

        index = Index()
        damaged: list[str] = []
        staged: list[str] = []
        superseded: set[str] = set()
        for name, packs, old in self.decoded_index_files(names, damaged):
            superseded.update(old)
            if name in superseded:
                continue  # a file read earlier supersedes it: its records are not staged
            staged.append(name)
            for pack_id, recs in packs:
                index.stage(pack_id, recs, gone=pack_id not in on_disk)
        if superseded.intersection(staged):
            return None
        return index, damaged, staged, superseded

    def _scan_index_files(
        self, names: list[str]
    ) -> tuple[list[str], list[str], set[str], dict[str, list[tuple[str, npt.NDArray[np.void]]]]]:
        """First pass over `names`: (damaged, readable, names they supersede, records kept).

        The first LOAD_HOLD records stay decoded for the second pass; the rest are read again
        there, so that memory does not grow with the repository.
        """
        damaged: list[str] = []
        readable: list[str] = []
        superseded: set[str] = set()
        held: dict[str, list[tuple[str, npt.NDArray[np.void]]]] = {}
        held_records = 0
        for name, packs, old in self.decoded_index_files(names, damaged):
            superseded.update(old)
            readable.append(name)
            count = sum(len(recs) for _, recs in packs)
            if held_records + count <= LOAD_HOLD:
                held[name] = packs
                held_records += count
        return damaged, readable, superseded, held

    def _read_index_cache(self, names: set[str], on_disk: set[str]) -> indexcache.Cached | None:
        from capsule.adapters.repository import indexcache  # noqa: PLC0415

        if self.cache_dir is None:
            return None
        try:
            return indexcache.load(self.cache_dir, self.id, self.sealer, index_names=names, on_disk=on_disk)
        except indexcache.CacheUnusable as e:
            log.debug("index cache not used", reason=str(e))
        except OSError as e:
            log.warning("index cache unreadable; reading every index file", error=e.strerror or str(e))
        return None

    def save_index_cache(self) -> None:
        """Write the index as it is now to the cache, if there is a cache folder. Call it only when
        every pack the index holds is in an index file (after `flush`). A cache that cannot be
        written is only logged: the next command reads the index files instead."""
        from capsule.adapters.repository import indexcache  # noqa: PLC0415

        if self.cache_dir is None or not self._index_loaded or self._unindexed or self._writes:
            return
        try:
            indexcache.save(
                self.cache_dir,
                self.id,
                self.sealer,
                self.index,
                covered=self._indexed_files,
                skipped=self._superseded_files,
            )
        except OSError as e:
            log.warning("index cache not written", folder=str(self.cache_dir), error=e.strerror or str(e))

    @property
    def loaded_index_files(self) -> frozenset[str]:
        """The index files the last `load_index` read or found superseded (damaged ones aside)."""
        return frozenset(self._indexed_files | self._superseded_files)

    @property
    def superseded_index_files(self) -> frozenset[str]:
        """Those of `loaded_index_files` that another index file supersedes (their records unread)."""
        return frozenset(self._superseded_files)

    def ensure_index(self) -> None:
        if not self._index_loaded:
            self.load_index()

    def read_blob(self, blob_id: bytes, loc: BlobLocation | None = None) -> bytes:
        """Return a blob's plaintext, authenticated and checked against its id."""
        if loc is None:
            loc = self.index.lookup(blob_id)
        if loc is None:
            raise BlobNotFound(f"blob {blob_id.hex()[:12]} is in no index; {NOT_INDEXED_ADVICE}")
        try:
            sealed = self._read_pack(loc.pack_id, loc.offset, loc.length)
        except ObjectNotFound as e:
            raise BlobNotFound(f"pack {loc.pack_id[:12]} holding blob {blob_id.hex()[:12]} is missing") from e
        return self.open_blob(blob_id, loc, sealed)

    def read_blobs(self, items: Sequence[tuple[bytes, BlobLocation]], check_id: bool = True) -> list[bytes]:
        """The plaintexts of located blobs, in order, each authenticated.

        Blobs that lie end to end in one pack (members of one bundle share its place) are read
        together, up to RUN_LIMIT bytes a read.
        """
        out = []
        for run in _end_to_end(items):
            first, last = run[0][1], run[-1][1]
            try:
                raw = memoryview(
                    self._read_pack(first.pack_id, first.offset, last.offset + last.length - first.offset)
                )
            except ObjectNotFound as e:
                raise BlobNotFound(f"pack {first.pack_id[:12]} is missing from the repository") from e
            for blob_id, loc in run:
                start = loc.offset - first.offset
                out.append(self.open_blob(blob_id, loc, raw[start : start + loc.length], check_id=check_id))
        return out

    def _read_pack(self, pack_id: str, offset: int, length: int) -> bytes:
        reader = self._pack_reader
        if reader is not None:
            return reader(pack_id, offset, length)
        return self.backend.read("data", pack_id, offset, length)

    @contextlib.contextmanager
    def reading_packs(self, reader: PackReader) -> Iterator[None]:
        """Within the block, `read_blob` and `read_blobs` take their ranges of packs from `reader`
        rather than from the backend: a restore from Drive serves them from packs it fetched whole
        (see packcache). Every blob is still authenticated as it is opened."""
        self._pack_reader = reader
        try:
            yield
        finally:
            self._pack_reader = None

    def open_blob(
        self, blob_id: bytes, loc: BlobLocation, sealed: bytes | memoryview, check_id: bool = True
    ) -> bytes:
        """Decrypt and decompress one blob.

        The AEAD tag binds the ciphertext to its id; `check_id` also hashes the plaintext (verify
        does; a restore that checks the whole file's SHA-256 need not).
        """

        def what() -> str:
            return f"blob {blob_id.hex()[:12]} in pack {loc.pack_id[:12]}"

        with self._count_lock:
            self.blobs_opened += 1
        if len(sealed) != loc.length:
            raise IntegrityError(f"{what()} is truncated")
        if loc.compression in BUNDLED:
            data = member(self._bundle(loc, sealed, what), loc.within, loc.plain_length, what)
            if check_id and self.sealer.blob_id(data) != blob_id:
                raise IntegrityError(f"{what()} does not match its id")
            return data
        data = decode_blob(
            self.sealer,
            _decompressor(),
            blob_id,
            blob_type=loc.blob_type,
            compression=loc.compression,
            sealed=sealed,
            plain_length=loc.plain_length,
            what=what,
        )
        if check_id and self.sealer.blob_id(data) != blob_id:
            raise IntegrityError(f"{what()} does not match its id")
        return data

    def _bundle(self, loc: BlobLocation, sealed: bytes | memoryview, what: Callable[[], str]) -> bytes:
        """A bundle's plaintext; the last one opened on this thread is kept, as its members are
        usually read one after the other."""
        key = (loc.pack_id, loc.offset)
        cached: tuple[tuple[str, int], bytes] | None = getattr(self._local, "bundle", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = decode_bundle(
            self.sealer,
            _decompressor(),
            blob_type=loc.blob_type,
            compression=loc.compression,
            sealed=sealed,
            what=what,
        )
        self._local.bundle = (key, data)
        return data

    # ---- snapshots -----------------------------------------------------------------------
    def save_snapshot(self, manifest: Manifest) -> str:
        name = self.save_sealed("snapshots", manifest.model_dump_json().encode())
        self.stored_bytes += self.backend.size("snapshots", name)
        return name

    def load_snapshot(self, name: str) -> Manifest:
        raw = self.load_sealed("snapshots", name)
        try:
            version = json.loads(raw).get("version")
        except (ValueError, AttributeError) as e:
            raise IntegrityError(f"snapshot {name[:12]} is not a valid manifest") from e
        if version not in READABLE_MANIFEST_VERSIONS:
            raise UnsupportedVersion(
                f"snapshot {name[:12]} uses manifest version {version!r}; this Capsule reads version "
                f"{max(READABLE_MANIFEST_VERSIONS)} and older: upgrade Capsule to read it"
            )
        try:
            return Manifest.model_validate_json(raw)
        except ValueError as e:
            raise IntegrityError(f"snapshot {name[:12]} is not a valid manifest: {e}") from e

    def snapshots(self) -> Iterator[tuple[str, Manifest]]:
        """Every readable snapshot; a damaged one is logged and skipped (`verify` reports it)."""
        for name, manifest in self.scan_snapshots():
            if isinstance(manifest, Manifest):
                yield name, manifest

    def scan_snapshots(self) -> Iterator[tuple[str, Manifest | UnreadableSnapshot]]:
        """Every snapshot: its manifest, or why it cannot be read (damaged, forged, or too new).

        One snapshot that cannot be read harms only itself: it is logged and reported here, and
        the caller goes on with the others.
        """
        for name in self.backend.list("snapshots"):
            try:
                yield name, self.load_snapshot(name)
            except UNREADABLE_SNAPSHOT as e:
                log.error(
                    "snapshot unreadable; skipped (run `capsule verify`)", snapshot=name[:12], error=str(e)
                )
                yield name, UnreadableSnapshot(name, str(e))


_decompressors = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    # A decompressor costs more to make than a 4 KiB page costs to decompress: one per thread.
    d: zstandard.ZstdDecompressor | None = getattr(_decompressors, "d", None)
    if d is None:
        d = _decompressors.d = zstandard.ZstdDecompressor()
    return d


def _decompress(payload: bytes, what: str, size: int | None = None) -> bytes:
    d = _decompressor()
    try:
        return d.decompress(payload, max_output_size=size or 0) if size else d.decompress(payload)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what} does not decompress") from e


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _hmac_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def read_config(backend: Backend) -> dict[str, Any]:
    try:
        raw = backend.read("config", "config")
    except ObjectNotFound as e:
        raise RepositoryNotFound(
            f"there is no repository at {backend.describe()}; create one with `capsule init`"
        ) from e
    try:
        config: dict[str, Any] = json.loads(raw)
    except ValueError as e:
        raise IntegrityError(f"the repository config at {backend.describe()} is not valid JSON") from e
    if config.get("format") != REPOSITORY_FORMAT:
        raise UnsupportedVersion(f"{backend.describe()} does not hold a Capsule repository")
    if config.get("version") not in READABLE_VERSIONS:
        raise UnsupportedVersion(
            f"the repository at {backend.describe()} uses format version {config.get('version')!r}; "
            f"this Capsule reads versions up to {REPOSITORY_VERSION}: upgrade Capsule to read it"
        )
    return config


RUN_LIMIT = 4 * 1024 * 1024  # bytes in one read of blobs that lie end to end


def _end_to_end(items: Sequence[tuple[bytes, BlobLocation]]) -> Iterator[list[tuple[bytes, BlobLocation]]]:
    """`items` cut where blobs stop lying end to end in one pack, or a read would pass RUN_LIMIT."""
    run: list[tuple[bytes, BlobLocation]] = []
    for item in items:
        loc = item[1]
        if run:
            first, last = run[0][1], run[-1][1]
            joined = loc.pack_id == last.pack_id and loc.offset in (last.offset, last.offset + last.length)
            if not joined or loc.offset + loc.length - first.offset > RUN_LIMIT:
                yield run
                run = []
        run.append(item)
    if run:
        yield run
