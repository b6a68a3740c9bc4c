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
from collections.abc import Callable, Iterator

from pydantic import TypeAdapter

from adapters.chunks import load_id_lists, store_id_lists
from adapters.errors import IntegrityError
from adapters.repository.pack import BLOB_DATA
from adapters.repository.repo import Repository
from domain.manifest import Entry, Manifest

GROUP_BITS = 6  # about 64 entries (6 KiB to 20 KiB of JSON) a group
GROUP_MASK = (1 << GROUP_BITS) - 1
GROUP_LIMIT = 1024

ENTRIES = TypeAdapter(list[Entry])


def path_key(path: str) -> list[str]:
    """The sort key of walk order: a folder's contents come right after it, before its next sibling."""
    return path.split("/")


def ends_group(path: str) -> bool:
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) & GROUP_MASK == 0


class TreeWriter:
    """Takes entries in walk order and stores them as tree blobs; `finish` stores the id lists."""

    def __init__(self, repo: Repository, has_blob: Callable[[bytes], bool] | None = None) -> None:
        self.repo = repo
        self.has_blob = has_blob
        self._group: list[Entry] = []
        self._ids = bytearray()
        self.entries = 0
        self.new_blobs = 0

    def add(self, entry: Entry) -> None:
        self._group.append(entry)
        self.entries += 1
        if ends_group(entry.path) or len(self._group) >= GROUP_LIMIT:
            self._store_group()

    def _store_group(self) -> None:
        if not self._group:
            return
        blob = self.repo.prepare(BLOB_DATA, ENTRIES.dump_json(self._group, exclude_defaults=True))
        if self.repo.add(blob, self.has_blob):
            self.new_blobs += 1
        self._ids += blob.blob_id
        self._group = []

    def finish(self) -> list[str]:
        """Store the last group and the lists that name every group; return the lists' ids."""
        self._store_group()
        return store_id_lists(self.repo, bytes(self._ids), self.has_blob) if self._ids else []


def load_group(repo: Repository, tree_id: bytes) -> list[Entry]:
    """One tree blob's entries, authenticated and validated (a path that could escape is refused)."""
    loc = repo.index.lookup(tree_id)
    if loc is not None and loc.blob_type != BLOB_DATA:
        raise IntegrityError(f"blob {tree_id.hex()[:12]} is named as a tree but is not a data blob")
    raw = repo.read_blob(tree_id, loc)
    try:
        return ENTRIES.validate_json(raw)
    except ValueError as e:
        raise IntegrityError(f"tree blob {tree_id.hex()[:12]} does not hold valid entries: {e}") from e


def tree_ids(repo: Repository, manifest: Manifest) -> list[bytes]:
    return load_id_lists(repo, manifest.tree) if manifest.tree else []


def iter_entries(repo: Repository, manifest: Manifest) -> Iterator[Entry]:
    """Every entry of a snapshot in walk order, one tree blob in memory at a time."""
    if not manifest.tree:
        yield from manifest.entries
        return
    for tree_id in tree_ids(repo, manifest):
        yield from load_group(repo, tree_id)
