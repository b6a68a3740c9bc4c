"""Which blobs snapshots use: every tree blob, list blob and data blob their manifests reach.

Prune deletes what no snapshot uses, so the walk here must never miss a blob: a tree or list blob
that cannot be read stops it with the error that says which (where verify, which only reports,
goes on). Ids are gathered in a sorted numpy array of 32-byte strings, made unique every
COMPACT_AT ids, so that memory grows with the distinct blobs (32 bytes each), not with the sum of
every snapshot's blobs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from capsule.adapters.files.tree import load_group
from capsule.adapters.repository.chunks import read_id_lists, split_ids
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.repo import Repository
from capsule.domain.manifest import Entry, Manifest

ID_DTYPE = np.dtype(f"S{ID_SIZE}")
COMPACT_AT = 1 << 18
LISTS_AT_ONCE = 256


class IdSet:
    """A growing set of blob ids; `freeze()` gives them sorted and unique for `contains`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pending = 0
        self._sorted: npt.NDArray[np.bytes_] = np.zeros(0, dtype=ID_DTYPE)

    def add(self, ids: bytes) -> None:
        """Add ids laid end to end."""
        if not ids:
            return
        self._parts.append(ids)
        self._pending += len(ids) // ID_SIZE
        if self._pending >= COMPACT_AT:
            self.freeze()

    def freeze(self) -> npt.NDArray[np.bytes_]:
        if self._parts:
            fresh = np.frombuffer(b"".join(self._parts), dtype=ID_DTYPE)
            self._parts, self._pending = [], 0
            if len(self._sorted):
                # Most ids added are known already (a database's unchanged pages, snapshot after
                # snapshot): only the new ones are sorted in, so memory follows the distinct ids.
                fresh = fresh[~self._known(fresh)]
            if len(fresh):
                self._sorted = _sorted_unique(np.concatenate([self._sorted, fresh]))
        return self._sorted

    def __len__(self) -> int:
        return len(self.freeze())

    def contains(self, ids: bytes) -> npt.NDArray[np.bool_]:
        """For ids laid end to end: whether each is in the set."""
        self.freeze()
        return self._known(np.frombuffer(ids, dtype=ID_DTYPE))

    def find(self, query: npt.NDArray[np.bytes_]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """For ids (ID_DTYPE): whether each is in the set, and its place in `freeze()`'s array
        (meaningful where found): for columns kept beside the set."""
        self.freeze()
        return self._find(query)

    def _known(self, query: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_]:
        """Whether each of `query` is among the ids sorted in so far."""
        return self._find(query)[0]

    def _find(self, query: npt.NDArray[np.bytes_]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        return find_sorted(self._sorted, query)

    def tobytes(self) -> bytes:
        return self.freeze().tobytes()


def find_sorted(
    have: npt.NDArray[np.bytes_], query: npt.NDArray[np.bytes_]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """For ids (ID_DTYPE) and sorted unique ids `have`: whether each is there, and where."""
    if not len(have):
        return np.zeros(len(query), dtype=bool), np.zeros(len(query), dtype=np.intp)
    at = np.minimum(np.searchsorted(have, query), len(have) - 1)
    # Compared as raw bytes: numpy's S comparisons ignore trailing NULs, raw bytes do not.
    raw_have = have.view(np.uint8).reshape(-1, ID_SIZE)[at]
    raw_query = query.view(np.uint8).reshape(-1, ID_SIZE)
    found: npt.NDArray[np.bool_] = (raw_have == raw_query).all(axis=1)
    return found, at


def _sorted_unique(ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bytes_]:
    """`ids` sorted, each once. Not `np.unique`, whose hashing of a million 32-byte strings took over
    100 MB at once. Fixed-length 32-byte values compare exactly (trailing NULs are only ignored
    between values of different lengths)."""
    ids = np.sort(ids)
    if len(ids) < 2:
        return ids
    keep = np.empty(len(ids), dtype=bool)
    keep[0] = True
    np.not_equal(ids[1:], ids[:-1], out=keep[1:])
    return ids[keep]


class UsageWalker:
    """Adds the blobs of manifests to an IdSet, each tree and list blob read once across them."""

    def __init__(self, repo: Repository, used: IdSet) -> None:
        self.repo = repo
        self.used = used
        self._trees: set[bytes] = set()
        self._lists: set[str] = set()

    def add(self, manifest: Manifest) -> None:
        """Add every blob `manifest` needs; a tree or list blob that cannot be read raises."""
        if not manifest.tree:
            self._entries(manifest.entries)
            return
        self.used.add(b"".join(bytes.fromhex(i) for i in manifest.tree))
        for tree_id in split_ids(b"".join(read_id_lists(self.repo, manifest.tree))):
            if tree_id in self._trees:
                continue
            self._trees.add(tree_id)
            self.used.add(tree_id)
            self._entries(load_group(self.repo, tree_id))

    def _entries(self, entries: Iterable[Entry]) -> None:
        lists: list[str] = []
        for entry in entries:
            self.used.add(b"".join(bytes.fromhex(b) for b in entry.blobs + entry.blob_lists))
            lists.extend(i for i in entry.blob_lists if i not in self._lists)
            self._lists.update(entry.blob_lists)
            if len(lists) >= LISTS_AT_ONCE:
                self._read_lists(lists)
                lists = []
        self._read_lists(lists)

    def _read_lists(self, lists: list[str]) -> None:
        if lists:
            for body in read_id_lists(self.repo, lists):
                self.used.add(body)
