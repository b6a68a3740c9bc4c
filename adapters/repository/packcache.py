"""Packs fetched whole for a restore from a backend whose reads are costly (Drive).

A restore reads a file's blobs in file order, a run of neighbouring blobs at a time: on a local disk
each run is a cheap read, but from Drive each is an HTTP request that waits a network round trip,
and a database takes a few thousand of them. Here a restore first adds up, pack by pack, the bytes it
will read (a pass over the file's blob locations: the index and the file's list blobs), then:

- a pack with at least `SHARE` of a pack's worth of bytes still to read is fetched whole, in one
  request, into a file of a temporary folder beside the restored files, and its ranges are read
  from there; once the restore has read all it planned from it, the file is removed;
- any other pack is read in ranges, as before: a restore of one small file never pays for a whole
  pack.

Nothing here is trusted more than a range read would be: every blob is authenticated (AEAD) as it
is opened, and the restored file's SHA-256 checked before it gets its name. Memory stays at a pack
per fetch in flight (`FETCHES`); the disk holds at most `HELD_PACKS` packs at once, and no more
than half the free space the restored files leave (`copy_room`): a pack that would pass that is
read in ranges until a copy is removed, so the copies never make a restore run out of disk that
would have fitted without them. The folder is removed when the restore ends, whether it succeeded
or not; a restore killed outright leaves it, and the next restore into the same folder removes it
(its name holds the PID of the process that made it).

Used by the database restores (to a folder, and the staged copy of one in place). A files restore
and `cat` read ranges as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from capsule.adapters.errors import DiskFull, ObjectNotFound
from capsule.adapters.logs import get_logger
from capsule.adapters.repository.backends.storage import Backend
from capsule.adapters.repository.lock import pid_alive
from capsule.adapters.repository.repo import Repository
from capsule.domain.manifest import Entry

log = get_logger(__name__)

SHARE = 0.25
"""A pack is fetched whole when at least this share of a pack's size is still to be read from it.
A database restore needs nearly all of most packs; a pack that holds a few of its pages, among
other backups' blobs, is read in ranges."""
HELD_PACKS = 32
"""Packs kept on disk at once, at most (1 GiB of 32 MiB packs)."""
FETCHES = 2
"""Whole packs fetched at once: each is held in memory while it arrives."""
FOLDER_MARK = ".capsule-packs-"


@dataclass
class _Pack:
    left: int = 0
    """Bytes the restore still plans to read from it."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    path: Path | None = None
    """Its whole copy, while there is one."""
    size: int = 0
    threshold: int | None = None
    """Planned bytes from which this pack is fetched whole, when its size is known (a pack smaller
    than the configured size, as a backup's last pack or its lists' pack is); else the cache's."""


class PackCache:
    """Serves ranges of packs to a restore, from whole copies where that saves requests."""

    def __init__(self, backend: Backend, folder: Path, pack_size: int, room: int | None = None) -> None:
        self._backend = backend
        self._folder = folder
        self.threshold = max(1, int(pack_size * SHARE))
        """Planned bytes from which a pack is fetched whole."""
        self._pack_size = pack_size
        self._limit = HELD_PACKS * pack_size if room is None else min(HELD_PACKS * pack_size, room)
        self._packs: dict[str, _Pack] = {}
        self._lock = threading.Lock()
        self._held = 0
        self._fetching = threading.Semaphore(FETCHES)
        self.fetched = 0
        """Packs fetched whole."""
        self.fetched_bytes = 0

    def plan(self, wanted: Mapping[str, int]) -> None:
        """Add bytes the restore will read, by pack."""
        with self._lock:
            for pack_id, n in wanted.items():
                self._packs.setdefault(pack_id, _Pack()).left += n

    def learn_sizes(self) -> None:
        """Ask the backend the size of each planned pack (one listing answers them all on Drive),
        so that a pack smaller than the configured size is fetched whole from its own share."""
        for pack_id, pack in list(self._packs.items()):
            try:
                size = self._backend.stat("data", pack_id).size
            except (ObjectNotFound, OSError):
                continue
            pack.threshold = max(1, min(self.threshold, int(size * SHARE)))

    def read(self, pack_id: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of pack `pack_id`: from its whole copy, fetched first if it is
        worth it, or from the backend."""
        pack = self._packs.get(pack_id)
        if pack is None:
            return self._backend.read("data", pack_id, offset, length)
        path = pack.path
        if path is None and self._worth_fetching(pack):
            with pack.lock:  # a second reader of the pack waits for the first one's fetch
                if pack.path is None and self._reserve(pack):
                    self._fetch(pack_id, pack)
                path = pack.path
        data = _read_copy(path, offset, length) if path is not None else None
        if data is None:
            data = self._backend.read("data", pack_id, offset, length)
        self._used(pack, len(data))
        return data

    def _threshold(self, pack: _Pack) -> int:
        return self.threshold if pack.threshold is None else pack.threshold

    def _worth_fetching(self, pack: _Pack) -> bool:
        with self._lock:
            return pack.left >= self._threshold(pack)

    def _reserve(self, pack: _Pack) -> bool:
        """Room for one more pack on disk, taken; False when the copies fill their room."""
        with self._lock:
            if pack.left < self._threshold(pack) or self._held + self._pack_size > self._limit:
                return False
            self._held += self._pack_size
            return True

    def _fetch(self, pack_id: str, pack: _Pack) -> None:
        path = self._folder / pack_id
        try:
            with self._fetching:
                data = self._backend.read("data", pack_id)
                with open(path, "xb") as f:
                    f.write(data)
        except BaseException as e:
            with self._lock:
                self._held -= self._pack_size
            with contextlib.suppress(OSError):
                path.unlink()
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DiskFull(
                    f"the disk holding {self._folder.parent} is full: a restore from "
                    f"{self._backend.describe()} keeps the packs it reads most of there while it runs "
                    f"(at most {self._limit // (1024 * 1024)} MiB); free space there and retry"
                ) from e
            raise
        with self._lock:
            self._held += len(data) - self._pack_size
            pack.path, pack.size = path, len(data)
            self.fetched += 1
            self.fetched_bytes += len(data)

    def _used(self, pack: _Pack, n: int) -> None:
        """`n` planned bytes were read: a copy whose planned bytes are all read is removed."""
        with self._lock:
            pack.left -= n
            path = pack.path if pack.left <= 0 else None
            if path is not None:
                pack.path = None
                self._held -= pack.size
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _read_copy(path: Path, offset: int, length: int) -> bytes | None:
    """The range from a whole copy; None when the copy was removed meanwhile (read it elsewhere)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _places(locations: Iterable[tuple[str, int, int]]) -> Counter[str]:
    """Bytes read by pack, for (pack, offset, length) in reading order: members of one bundle that
    follow each other share their bundle's place, which is read once."""
    wanted: Counter[str] = Counter()
    last: tuple[str, int] | None = None
    for pack_id, offset, length in locations:
        if (pack_id, offset) != last:
            wanted[pack_id] += length
        last = (pack_id, offset)
    return wanted


def list_bytes(repo: Repository, entries: Iterable[Entry]) -> tuple[Counter[str], Counter[str]]:
    """Bytes of the entries' list blobs by pack, twice (the plan reads them, then the restore), and
    how many of them each pack holds."""
    wanted: Counter[str] = Counter()
    lists: Counter[str] = Counter()
    for entry in entries:
        ids = [bytes.fromhex(i) for i in entry.blob_lists]
        located = [(loc.pack_id, loc.offset, loc.length) for loc in repo.index.locate_many(ids) if loc]
        wanted.update(_places(located))
        lists.update(pack_id for pack_id, _, _ in located)
    return wanted + wanted, lists


def content_bytes(repo: Repository, entries: Iterable[Entry]) -> Counter[str]:
    """Bytes of the entries' content blobs by pack, as the restore reads them."""
    from capsule.adapters.repository.restore import locate_all  # noqa: PLC0415 - it imports this module

    wanted: Counter[str] = Counter()
    for entry in entries:
        wanted.update(_places((loc.pack_id, loc.offset, loc.length) for _, loc in locate_all(repo, entry)))
    return wanted


def copy_room(free: int, restored: int) -> int:
    """Bytes the whole-pack copies may take on a disk with `free` bytes free, where the restore
    will write `restored` bytes: half of what the restored files leave."""
    return max(0, free - restored) // 2


@contextlib.contextmanager
def whole_packs(repo: Repository, entries: list[Entry], to: Path) -> Iterator[PackCache]:
    """Within the block, `repo` reads packs through a `PackCache` planned for restoring `entries`,
    whose copies live in a temporary folder under `to` removed at the end."""
    to.mkdir(parents=True, exist_ok=True)
    remove_abandoned(to)
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_MARK}{os.getpid()}-", dir=to))
    # Drive finds each pack's file with a search: one listing of the folder answers them all.
    one_listing = getattr(repo.backend, "one_listing", None)
    try:
        room = copy_room(shutil.disk_usage(folder).free, sum(e.size for e in entries))
        cache = PackCache(repo.backend, folder, repo.pack_size, room)
        with (
            repo.reading_packs(cache.read),
            one_listing() if callable(one_listing) else contextlib.nullcontext(),
        ):
            lists, held = list_bytes(repo, entries)
            # A backup writes a file's lists among its pages, a few to a pack: the plan reads them
            # before it knows how much of their packs the restore needs, and a pack that holds two or
            # more is taken as needed whole while it does (one request rather than one a list).
            likely = Counter({pack_id: cache.threshold for pack_id, n in held.items() if n >= 2})
            cache.plan(lists + likely)
            cache.plan(content_bytes(repo, entries))
            cache.plan({pack_id: -n for pack_id, n in likely.items()})
            cache.learn_sizes()
            yield cache
        log.info("packs fetched whole", packs=cache.fetched, bytes=cache.fetched_bytes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_abandoned(to: Path) -> int:
    """Remove the pack folders under `to` of restores whose process is gone; return how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for leftover in to.glob(f"{FOLDER_MARK}*"):
            pid, dash, _ = leftover.name.removeprefix(FOLDER_MARK).partition("-")
            if not (pid.isdigit() and dash) or pid_alive(int(pid)) or leftover.is_symlink():
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                removed += 1
    return removed
