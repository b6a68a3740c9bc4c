"""A files snapshot's entries, stored in groups as tree blobs that deduplicate between snapshots.

Entries are kept in walk order: depth first, the names of each folder sorted, which is the order of
their paths compared component by component (`path_key`). The sequence is cut into groups after
every entry whose path's CRC-32 ends in GROUP_BITS zero bits (and at GROUP_LIMIT entries), so cut
points depend on paths alone: a file added, changed or removed changes the one group it falls in,
and every other group of a snapshot of 100,000 files is the same blob as in its parent. A group is
a tree blob (type 2) whose plaintext is the group's entries as a JSON array; the manifest's `tree`
names list blobs whose concatenated ids name the tree blobs in order.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import pydantic_core

from capsule.adapters.errors import IntegrityError
from capsule.adapters.files.entries import ENTRIES, decode_entries, paths_safe
from capsule.adapters.repository.chunks import load_id_lists, store_id_lists
from capsule.adapters.repository.pack import BLOB_DATA
from capsule.adapters.repository.repo import Repository
from capsule.domain.manifest import Entry, Manifest

if TYPE_CHECKING:
    from capsule.adapters.repository.index import BlobLocation

GROUP_BITS = 6  # about 64 entries (6 KiB to 20 KiB of JSON) a group
GROUP_MASK = (1 << GROUP_BITS) - 1
GROUP_LIMIT = 1024
READ_BATCH = 8  # tree blobs read by one task of the read-ahead thread


def path_key(path: str) -> list[str]:
    """The sort key of walk order: a folder's contents come right after it, before its next sibling."""
    return path.split("/")


def ends_group(path: str) -> bool:
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) & GROUP_MASK == 0


class TreeWriter:
    """Takes entries in walk order and stores them as tree blobs; `finish` stores the id lists.

    An entry passed with the parent snapshot's group it came from, unchanged, lets a group made
    only of one parent group's entries, all of them, reuse that group's tree blob as it is: a
    backup in which little changed serialises and seals only the groups that did.
    """

    def __init__(
        self,
        repo: Repository,
        has_blob: Callable[[bytes], bool] | None = None,
        stored_groups: set[bytes] | None = None,
    ) -> None:
        self.repo = repo
        self.has_blob = has_blob or repo.has_blob
        # The parent's tree blobs found stored when the backup began, looked up together: the
        # index does not lose a blob while a backup holds the repository.
        self._stored_groups = stored_groups
        self._check = has_blob
        self._group: list[Entry | tuple[RawGroup, int]] = []
        self._from: RawGroup | None = None
        self._from_count = 0
        self._ids = bytearray()
        self.entries = 0
        self.new_blobs = 0
        self.reused_groups = 0

    def add(self, entry: Entry) -> None:
        """Add the next entry, a new one."""
        self._group.append(entry)
        self.entries += 1
        if ends_group(entry.path) or len(self._group) >= GROUP_LIMIT:
            self._store_group()

    def add_prior(self, group: RawGroup, at: int) -> None:
        """Add the next entry: entry `at` of the parent's `group`, unchanged."""
        if not self._group:
            self._from, self._from_count = group, 0
        if group is self._from:
            self._from_count += 1
        self._group.append((group, at))
        self.entries += 1
        if ends_group(group.items[at]["path"]) or len(self._group) >= GROUP_LIMIT:
            self._store_group()

    def _store_group(self) -> None:
        if not self._group:
            return
        same = self._from
        if (
            same is not None
            and self._from_count == len(self._group) == same.size
            and (
                same.id in self._stored_groups if self._stored_groups is not None else self.has_blob(same.id)
            )
        ):
            self._ids += same.id
            self.reused_groups += 1
        else:
            # A parent's entry goes into a new group as its model: its group is validated whole.
            entries = [e if isinstance(e, Entry) else e[0].entry(e[1]) for e in self._group]
            blob = self.repo.prepare(BLOB_DATA, ENTRIES.dump_json(entries, exclude_defaults=True))
            if self.repo.add(blob, self._check):
                self.new_blobs += 1
            self._ids += blob.blob_id
        self._group = []
        self._from = None

    def finish(self) -> list[str]:
        """Store the last group and the lists that name every group; return the lists' ids."""
        self._store_group()
        return store_id_lists(self.repo, bytes(self._ids), self._check) if self._ids else []


class ParentGroup(NamedTuple):
    """One tree blob of a parent snapshot: its id and how many entries it holds."""

    id: bytes
    size: int


class RawGroup:
    """One tree blob of a parent snapshot, its entries parsed from JSON as plain dicts.

    A backup compares each item it finds with the parent's entry at its path on a few fields, and
    a group whose entries all match is named again as it is: for that, no entry needs its model.
    The models of a group are made, and checked as `load_group` checks them, the first time one of
    its entries is needed whole (`PriorEntry.model`). Every path was checked at parsing.
    """

    __slots__ = ("_entries", "_raw", "id", "items", "size")

    def __init__(self, tree_id: bytes, raw: bytes, items: list[dict[str, Any]]) -> None:
        self.id = tree_id
        self.items = items
        self.size = len(items)
        self._raw = raw
        self._entries: list[Entry] | None = None

    def entry(self, at: int) -> Entry:
        if self._entries is None:
            self._entries = _decode(self.id, self._raw)
        return self._entries[at]


class PriorEntry:
    """An entry of the parent snapshot: its fields as parsed (`raw`), its model when asked."""

    __slots__ = ("at", "group", "path", "raw")

    def __init__(self, group: RawGroup, at: int, raw: dict[str, Any]) -> None:
        self.group = group
        self.at = at
        self.raw = raw
        self.path: str = raw["path"]

    def model(self) -> Entry:
        return self.group.entry(self.at)


def parse_group(tree_id: bytes, raw: bytes) -> RawGroup:
    """A tree blob's plaintext as a `RawGroup`: a JSON array of objects whose paths all are
    relative and inside (refused as `load_group` refuses it otherwise)."""
    try:
        items = pydantic_core.from_json(raw, cache_strings="keys")
        # A path that is not a string stops the join, an item that is not an object the subscript.
        safe = type(items) is list and paths_safe([i["path"] for i in items])
    except (ValueError, TypeError, KeyError, IndexError):
        safe = False
    if not safe:
        # What the model takes, JSON does not stop (it refuses the rest with its own error).
        entries = _decode(tree_id, raw)
        items = [e.model_dump(mode="json", exclude_defaults=True) for e in entries]
    return RawGroup(tree_id, raw, items)


def _decode(tree_id: bytes, raw: bytes) -> list[Entry]:
    try:
        return decode_entries(raw)
    except ValueError as e:
        raise IntegrityError(f"tree blob {tree_id.hex()[:12]} does not hold valid entries: {e}") from e


def load_group(
    repo: Repository, tree_id: bytes, sealed: bytes | None = None, loc: BlobLocation | None = None
) -> list[Entry]:
    """One tree blob's entries, authenticated and validated as the `Entry` model validates them (a
    path that could escape is refused; `decode_entries` checks the model's rules without it).

    `sealed` is the blob as stored, if the caller has read it already; `loc` where the index has
    it, if the caller has looked it up already.
    """
    return _decode(tree_id, _open_tree_blob(repo, tree_id, sealed, loc))


def _open_tree_blob(
    repo: Repository, tree_id: bytes, sealed: bytes | None, loc: BlobLocation | None
) -> bytes:
    if loc is None:
        loc = repo.index.lookup(tree_id)
    if loc is not None and loc.blob_type != BLOB_DATA:
        raise IntegrityError(f"blob {tree_id.hex()[:12]} is named as a tree but is not a data blob")
    if sealed is not None and loc is not None:
        return repo.open_blob(tree_id, loc, sealed)
    return repo.read_blob(tree_id, loc)


def _read_stored(repo: Repository, loc: BlobLocation | None) -> bytes | None:
    """The tree blob as stored, or None to let `load_group` say what is wrong."""
    if loc is None:
        return None
    try:
        return repo.backend.read("data", loc.pack_id, loc.offset, loc.length)
    except OSError:
        return None


def tree_ids(repo: Repository, manifest: Manifest) -> list[bytes]:
    return load_id_lists(repo, manifest.tree) if manifest.tree else []


def iter_entries(repo: Repository, manifest: Manifest) -> Iterator[Entry]:
    """Every entry of a snapshot in walk order, a few tree blobs in memory at a time."""
    if not manifest.tree:
        yield from manifest.entries
        return
    for _, entries in iter_groups(repo, manifest):
        yield from entries


def iter_groups(repo: Repository, manifest: Manifest) -> Iterator[tuple[ParentGroup, list[Entry]]]:
    """Each tree blob of a files snapshot with its entries, in walk order.

    The next tree blobs are read from disk on a thread while the caller works through one; they
    are opened and parsed here (on a thread they would only fight this one for the interpreter).
    """
    return read_groups(repo, tree_ids(repo, manifest))


def read_groups(
    repo: Repository, ids_in_order: Iterable[bytes]
) -> Generator[tuple[ParentGroup, list[Entry]], None, None]:
    """The tree blobs named with their entries, in order, read ahead (`_read_ahead`)."""
    for tree_id, plain in _read_ahead(repo, ids_in_order):
        entries = _decode(tree_id, plain)
        yield ParentGroup(tree_id, len(entries)), entries


def read_raw_groups(repo: Repository, ids_in_order: Iterable[bytes]) -> Generator[RawGroup, None, None]:
    """The tree blobs named as `RawGroup`s, in order, read ahead (`_read_ahead`)."""
    for tree_id, plain in _read_ahead(repo, ids_in_order):
        yield parse_group(tree_id, plain)


def _read_ahead(
    repo: Repository, ids_in_order: Iterable[bytes]
) -> Generator[tuple[bytes, bytes], None, None]:
    """Each tree blob named, opened, in order; the next ones read from disk on a thread, as
    `iter_groups` says. A task on the thread reads READ_BATCH blobs (a task handed over for each
    blob cost the walk of 100,000 unchanged files more than the reads), and two tasks are ahead of
    the one being used."""
    all_ids = list(ids_in_order)
    found = list(zip(all_ids, repo.index.locate_many(all_ids), strict=True))  # one search
    batches = (found[at : at + READ_BATCH] for at in range(0, len(found), READ_BATCH))
    # Not `with`: a reader dropped midway is closed wherever the garbage collector finds it, even
    # inside the interpreter's own start of a thread, and waiting there for the read-ahead thread
    # deadlocks. Its last read, if one is going, finishes on its own and is thrown away.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tree")
    ahead: deque[tuple[list[tuple[bytes, BlobLocation | None]], Future[list[bytes | None]]]] = deque()
    try:
        while True:
            while len(ahead) < 2 and (batch := next(batches, None)) is not None:
                ahead.append((batch, reader.submit(_read_some, repo, [loc for _, loc in batch])))
            if not ahead:
                return
            batch, future = ahead.popleft()
            for (tree_id, loc), sealed in zip(batch, future.result(), strict=True):
                yield tree_id, _open_tree_blob(repo, tree_id, sealed, loc)
    finally:
        reader.shutdown(wait=False, cancel_futures=True)


def _read_some(repo: Repository, locations: list[BlobLocation | None]) -> list[bytes | None]:
    return [_read_stored(repo, loc) for loc in locations]
