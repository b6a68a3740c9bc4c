"""Copying blobs out of condemned packs into new ones, for prune's repack phase.

A blob is copied as it is stored (a bundle whole, its members' header entries as pack.py lays
them out): nothing is decrypted to be sealed again. A pack's header is read first (its tail) and
checked as section 8.2 of the repository format says; then only the runs of stored units to be
copied are read, and every unit copied is opened with its AES-GCM tag first, so that a unit damaged
since it was written is never carried over (section 14.2 says why the tag is the whole check a
copier owes: the bytes and their header entries move unchanged). Stored units that lie end to end
are copied as one run, and the runs read go into the new pack as they are, written from its pieces.

Memory: the runs read ahead of the copy are bounded in bytes (`ReadBudget`, a pack's worth by
default), and the pack being filled holds about another pack's worth: about two packs in all. A
backend whose objects are not local files is read a pack at a time, whole (one request), and the
runs kept are copied out of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import structlog

from capsule.adapters.errors import IntegrityError, ObjectNotFound
from capsule.adapters.repository.backends.storage import local_paths, write_parts
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.index import HEADER_DTYPE, encode_index, header_records
from capsule.adapters.repository.pack import (
    BUNDLED,
    HEADER_AAD,
    HEADER_ENTRY,
    MAX_HEADER_GUESS,
    PACK_MAGIC,
    TRAILER,
    PackBuilder,
    blob_aad,
    bundle_aad,
)
from capsule.adapters.repository.pruneplan import Repacked
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.usage import ID_DTYPE, find_sorted

log = structlog.get_logger(__name__)

Checkpoint = Callable[[str], None]


def open_pack(repo: Repository, data: bytes, name: str) -> tuple[bytes, npt.NDArray[np.void]]:
    """(header plaintext, its entries as HEADER_DTYPE) of a whole pack's bytes, checked as
    `pack.parse_header` checks them; IntegrityError naming the pack otherwise."""
    return open_header(repo, len(data), data, name)


def open_header(repo: Repository, size: int, tail: bytes, name: str) -> tuple[bytes, npt.NDArray[np.void]]:
    """`open_pack` of a pack of `size` bytes given its last bytes `tail` (at least its header and
    trailer, or the whole pack)."""
    what = f"the header of pack {name[:12]}"
    if len(tail) < TRAILER.size or size < len(tail):
        raise IntegrityError(f"pack {name[:12]} is truncated")
    header_len, magic = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)
    if magic != PACK_MAGIC:
        raise IntegrityError(f"pack {name[:12]} does not end with a pack trailer")
    if header_len + TRAILER.size > len(tail):
        raise IntegrityError(f"{what} claims an impossible length")
    end = len(tail) - TRAILER.size
    header = repo.sealer.open(memoryview(tail)[end - header_len : end], HEADER_AAD, what)
    if len(header) % HEADER_ENTRY.size:
        raise IntegrityError(f"{what} has a broken length")
    entries = np.frombuffer(header, dtype=HEADER_DTYPE)
    bundled = (entries["comp"] == BUNDLED[0]) | (entries["comp"] == BUNDLED[1])
    member = bundled & (entries["length"] == 0)
    if ((entries["length"] == 0) & ~bundled).any():
        raise IntegrityError(f"{what} lists a blob with no bytes")
    if member.any():
        rows = np.arange(len(entries))
        head = np.maximum.accumulate(np.where(member, 0, rows))
        lone = member & ((head == rows) | ~bundled[head])
        lone |= member & (
            (entries["type"][head] != entries["type"]) | (entries["comp"][head] != entries["comp"])
        )
        if member[0] or lone.any():
            raise IntegrityError(f"{what} lists a bundle member outside a bundle")
    if int(entries["length"].sum(dtype=np.int64)) + header_len + TRAILER.size != size:
        raise IntegrityError(f"{what} does not account for the pack's size")
    return header, entries


class ReadBudget:
    """Bytes read ahead of the copy, granted to the packs in their order: a pack's runs are read
    once its turn comes and the bytes read before it and not yet copied leave room for them (or
    none are held: a pack bigger than the budget is read alone). The pack the copy waits for is
    always the next to be granted, with nothing held before it, so the copy never waits for a
    grant that cannot come."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.turn = 0
        self.closed = False
        self._changed = threading.Condition()

    def take(self, ticket: int, size: int) -> None:
        """Wait for turn `ticket` (taken in order) and room for `size` bytes; nothing if the turn
        was taken already (a reader failing after its grant passes its turn on again)."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self.closed
                    or self.turn > ticket
                    or (self.turn == ticket and (not self.held or self.held + size <= self.limit))
                )
            )
            if self.turn > ticket:
                return
            self.held += size
            self.turn = ticket + 1
            self._changed.notify_all()

    def give(self, size: int) -> None:
        """`size` bytes taken are copied (or dropped)."""
        with self._changed:
            self.held -= size
            self._changed.notify_all()

    def close(self) -> None:
        """Let every waiter go: the copy has stopped."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()


class Source(NamedTuple):
    """What of a condemned pack is to be copied, read and checked."""

    header: bytes
    """The header entries of the rows copied, end to end."""
    runs: list[bytes | memoryview]
    """The stored units copied, as runs of adjacent units in file order."""
    ids: npt.NDArray[np.bytes_]
    """The ids of the rows copied."""
    found: int
    """How many of the wanted blobs the pack held."""
    held: int
    """The bytes taken from the read budget for it (given back once copied)."""


class Repacker:
    """Fills new packs with whole stored units (a blob, or a bundle whole) copied from condemned
    packs."""

    def __init__(self, repo: Repository, checkpoint: Checkpoint, ahead_bytes: int | None = None) -> None:
        self.repo = repo
        self.checkpoint = checkpoint
        self.builder = PackBuilder()
        self.in_builder: set[bytes] = set()
        self.written: dict[str, npt.NDArray[np.void]] = {}
        self.bytes_written = 0
        self.budget = ReadBudget(repo.pack_size if ahead_bytes is None else ahead_bytes)
        """Bounds the runs read ahead of the copy (`open_source` given a ticket)."""

    def open_source(
        self, pack_id: str, wanted: npt.NDArray[np.bytes_], ticket: int | None = None
    ) -> Source | None:
        """Read the units of pack `pack_id` holding one of `wanted` (sorted ids, ID_DTYPE), each
        authenticated; None if the pack is gone or holds none. Reads only: safe on several threads
        at once. With a `ticket` (0, 1, 2... in the order the sources are added), the runs are read
        within `budget`, and every ticket must be passed to one call."""
        try:
            return self._open_source(pack_id, wanted, ticket)
        finally:
            if ticket is not None:
                self.budget.take(ticket, 0)  # the turn passed on, if it was not taken (no room asked)

    def _grant(self, ticket: int | None, size: int) -> int:
        if ticket is None:
            return 0
        self.budget.take(ticket, size)
        return size

    def _open_source(self, pack_id: str, wanted: npt.NDArray[np.bytes_], ticket: int | None) -> Source | None:
        backend = self.repo.backend
        paths = local_paths(backend)
        if paths is None:
            try:
                held = [backend.read("data", pack_id)]
            except ObjectNotFound:
                return None
            # The runs are copies: the whole pack is let go once they are read, before the checks.
            return self._take_runs(
                pack_id,
                wanted,
                ticket,
                size=len(held[0]),
                tail=held[0],
                read=lambda a, n: held[0][a : a + n],
                read_all=held.clear,
            )
        # A local pack is opened once: its tail and every run it gives are read from that one file
        # (a pack copied from in many runs cost an open for each).
        try:
            with paths.open_file("data", pack_id) as pack:
                tail = pack.tail(MAX_HEADER_GUESS)
                if len(tail) >= TRAILER.size and len(tail) < pack.size:
                    header_len = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)[0]
                    if header_len + TRAILER.size > len(tail):
                        tail = pack.tail(header_len + TRAILER.size)
                return self._take_runs(pack_id, wanted, ticket, size=pack.size, tail=tail, read=pack.read)
        except ObjectNotFound:
            return None

    def _take_runs(
        self,
        pack_id: str,
        wanted: npt.NDArray[np.bytes_],
        ticket: int | None,
        *,
        size: int,
        tail: bytes,
        read: Callable[[int, int], bytes],
        read_all: Callable[[], None] | None = None,
    ) -> Source | None:
        """The Source of the pack of `size` bytes whose last bytes are `tail` (at least its header),
        reading its runs with `read(offset, length)`; `read_all` is called once they are read."""
        header, entries = open_header(self.repo, size, tail, pack_id)
        del tail
        recs = header_records(header)
        ids = np.ascontiguousarray(recs["id"]).view(ID_DTYPE)
        want, _ = find_sorted(wanted, ids)
        if not want.any():
            return None
        rows = np.arange(len(recs))
        # The first row of each row's unit; a unit is copied whole when one of its blobs is wanted.
        head = np.maximum.accumulate(np.where(entries["length"] > 0, rows, 0))
        unit_wanted = np.zeros(len(recs), dtype=bool)
        unit_wanted[head[want]] = True
        take = unit_wanted[head]
        # Runs of rows taken one after the other: adjacent rows are adjacent units in the file, and
        # a run's bytes end where the next row's unit begins (or where the blobs end).
        edges = np.flatnonzero(np.diff(np.concatenate([[0], take.astype(np.int8), [0]])))
        begins = np.append(recs["offset"].astype(np.int64), int(entries["length"].sum(dtype=np.int64)))
        firsts, stops = begins[edges[::2]].tolist(), begins[edges[1::2]].tolist()
        spans = list(zip(firsts, stops, strict=True))
        held = self._grant(ticket, sum(b - a for a, b in spans))
        runs: list[bytes | memoryview] = [read(a, b - a) for a, b in spans]
        if read_all is not None:
            read_all()
        for (a, b), run in zip(spans, runs, strict=True):
            if len(run) != b - a:
                raise IntegrityError(f"pack {pack_id[:12]} is shorter than its header says")
        self._authenticate(pack_id, firsts=firsts, runs=runs, recs=recs, head=head, want=want)
        return Source(entries[take].tobytes(), runs, ids[take], int(want.sum()), held)

    def add(self, source: Source | None) -> int:
        """Copy the units `open_source` checked; return how many wanted blobs they hold."""
        if source is None:
            return 0
        self._add(source)
        return source.found

    def copy_from(self, pack_id: str, wanted: npt.NDArray[np.bytes_]) -> int:
        """Copy the units of pack `pack_id` holding one of `wanted` (sorted ids, ID_DTYPE), each
        authenticated first; return how many of `wanted` the pack held (0 if the pack is gone)."""
        return self.add(self.open_source(pack_id, wanted))

    def _authenticate(
        self,
        pack_id: str,
        *,
        firsts: list[int],
        runs: list[bytes | memoryview],
        recs: npt.NDArray[np.void],
        head: npt.NDArray[np.intp],
        want: npt.NDArray[np.bool_],
    ) -> None:
        """Open every stored unit holding a wanted blob with its AES-GCM tag, each unit once;
        IntegrityError naming the first wanted blob of a unit that fails. `runs` are the bytes read,
        the one at `firsts[i]` in the pack being `runs[i]`; every unit to check lies in one.

        The unit is copied byte for byte, under header entries copied from the pack's authenticated
        header: the tag proves those bytes are the ones their writer sealed, which is all a copy
        needs (the format's section 14.2). Decompressing and hashing each member again would prove
        only what the writer already did, and every reader of the new pack checks it anyway."""
        sealer = self.repo.sealer
        units, first = np.unique(head[want], return_index=True)
        named = np.flatnonzero(want)[first]
        raw_ids = np.ascontiguousarray(recs["id"][named]).tobytes()
        columns = [recs[name][units].tolist() for name in ("type", "comp", "offset", "length")]
        where = (
            np.searchsorted(
                np.asarray(firsts, dtype=np.int64), np.asarray(columns[2], dtype=np.int64), "right"
            )
            - 1
        ).tolist()
        views = [memoryview(run) for run in runs]
        for k, (btype, comp, offset, length) in enumerate(zip(*columns, strict=True)):
            blob_id = raw_ids[k * ID_SIZE : (k + 1) * ID_SIZE]

            def what(blob_id: bytes = blob_id) -> str:
                return f"blob {blob_id.hex()[:12]} in pack {pack_id[:12]}"

            aad = bundle_aad(btype, comp) if comp in BUNDLED else blob_aad(btype, comp, blob_id)
            at = offset - firsts[where[k]]
            sealer.open(views[where[k]][at : at + length], aad, what)

    def _add(self, source: Source) -> None:
        """Add the runs of `source` to the pack being filled, as they are."""
        raw = source.ids.tobytes()
        taken = {raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)}
        incoming = sum(len(run) for run in source.runs)
        if len(self.builder) and (
            not self.in_builder.isdisjoint(taken) or self.builder.size + incoming > self.repo.pack_size
        ):
            self._write()  # a pack lists an id at most once; and packs keep about their size
        self.builder.add_runs(source.header, source.runs)
        self.in_builder |= taken
        self.budget.give(source.held)  # its bytes are the new pack's now
        if self.builder.size >= self.repo.pack_size:
            self._write()

    def _write(self) -> None:
        if not len(self.builder):
            return
        pack_id, parts = self.builder.finish_parts(self.repo.sealer)
        write_parts(self.repo.backend, "data", pack_id, parts)  # from its pieces: no joined copy
        self.written[pack_id] = header_records(self.builder.header)
        self.bytes_written += sum(len(p) for p in parts)
        del parts
        self.builder, self.in_builder = PackBuilder(), set()
        self.checkpoint("prune:repack-pack-written")

    def finish(self) -> Repacked:
        self._write()
        if not self.written:
            return Repacked()
        name = self.repo.save_sealed("index", encode_index(self.written, version=self.repo.version))
        self.checkpoint("prune:repack-indexed")
        blobs = sum(len(r) for r in self.written.values())
        log.info("repacked", packs=len(self.written), blobs=blobs, bytes=self.bytes_written)
        return Repacked(tuple(sorted(self.written)), name, blobs, self.bytes_written)
