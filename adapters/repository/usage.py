"""Which blobs snapshots use: every tree blob, list blob and data blob their manifests reach.

Prune deletes what no snapshot uses, so the walk here must never miss a blob: a tree or list blob
that cannot be read stops it with the error that says which (where verify, which only reports,
goes on). Ids are gathered in a sorted numpy array, made unique every COMPACT_AT ids, so that
memory grows with the distinct blobs, not with the sum of every snapshot's blobs: whole 32-byte
ids in an IdSet (exact), or their first 8 bytes in a PrefixSet (the plan and repack of a prune,
where a shared prefix can only keep a blob).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from capsule.adapters.errors import NOT_INDEXED_ADVICE, BlobNotFound, IntegrityError, ObjectNotFound
from capsule.adapters.files.tree import load_group
from capsule.adapters.repository.chunks import read_id_lists, split_ids
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.index import BlobLocation
from capsule.adapters.repository.pack import BLOB_LIST
from capsule.adapters.repository.repo import Repository
from capsule.domain.manifest import Entry, Manifest

ID_DTYPE = np.dtype(f"S{ID_SIZE}")
COMPACT_AT = 1 << 18
LISTS_AT_ONCE = 256
SORT_QUERIES_FROM = 4096
SPAN_LIMIT = 4 * 1024 * 1024
"""Bytes in one read of list blobs from one pack (the blobs and what lies between them)."""


class IdSet:
    """A growing set of blob ids; `freeze()` gives them sorted and unique for `contains`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pending = 0
        self._sorted: npt.NDArray[np.bytes_] = np.zeros(0, dtype=ID_DTYPE)
        self._keys: npt.NDArray[np.uint64] | None = np.zeros(0, dtype=np.uint64)
        """The first 8 bytes of each sorted id as a number, while no two share them; else None."""

    def add(self, ids: bytes) -> None:
        """Add ids laid end to end."""
        if not ids:
            return
        self._parts.append(ids)
        self._pending += len(ids) // ID_SIZE
        if self._pending >= COMPACT_AT:
            self.freeze()

    @staticmethod
    def words(ids: bytes | memoryview) -> npt.NDArray[np.uint64]:
        """Ids laid end to end as what this set compares: a row of four 8-byte words each."""
        return np.frombuffer(ids, dtype=np.uint64).reshape(-1, ID_SIZE // 8)

    def add_words(self, words: npt.NDArray[np.uint64]) -> None:
        """Add ids given as `words` gives them."""
        self.add(words.tobytes())

    def freeze(self) -> npt.NDArray[np.bytes_]:
        if self._parts:
            fresh = np.frombuffer(b"".join(self._parts), dtype=ID_DTYPE)
            self._parts, self._pending = [], 0
            if len(self._sorted):
                # Most ids added are known already (a database's unchanged pages, snapshot after
                # snapshot): only the new ones are sorted in, so memory follows the distinct ids.
                fresh = fresh[~self._known(fresh)]
            if len(fresh):
                self._merge(_sorted_unique(fresh))
        return self._sorted

    def _merge(self, fresh: npt.NDArray[np.bytes_]) -> None:
        """Sort in `fresh` (sorted, unique, none of them known yet). Each id is put in its place in
        one new array, so that memory at the peak is the set twice (it was four times with the
        ids concatenated, sorted and made unique again): the set of an 8 GiB database's pages is
        some 2 million ids."""
        fresh_keys = _prefixes(fresh)
        keys = self._keys
        at = np.searchsorted(keys, fresh_keys) if keys is not None and len(keys) else None
        if (
            keys is None
            or at is None
            or bool((fresh_keys[1:] == fresh_keys[:-1]).any())
            or bool((keys[np.minimum(at, len(keys) - 1)] == fresh_keys).any())
        ):
            # Two ids sharing their first 8 bytes (or the first ids): sorted as strings.
            self._sorted = _sorted_unique(np.concatenate([self._sorted, fresh]))
            self._keys = _unique_keys(self._sorted)
            return
        self._sorted = np.insert(self._sorted, at, fresh)
        self._keys = np.insert(keys, at, fresh_keys)

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
        return find_sorted(self._sorted, query, self._keys)

    def tobytes(self) -> bytes:
        return self.freeze().tobytes()


class PrefixSet:
    """A growing set of blob ids kept as their first 8 bytes (a big-endian number each), sorted
    and unique: 8 bytes an id where an IdSet holds 40, for the set of every used blob that a prune
    keeps through its plan and repack.

    `contains` answers whether an id's prefix is in the set, so an id the set never received may
    be answered True when it shares its first 8 bytes with one it did: never False for an id added.
    A prune asks it only "may this blob be used?", where a wrong yes keeps an unused blob (and
    perhaps its pack) for a later prune, and a wrong no cannot happen (repository format, 14.2).
    """

    def __init__(self) -> None:
        self._parts: list[npt.NDArray[np.uint64]] = []
        self._pending = 0
        self._sorted: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)

    def add(self, ids: bytes) -> None:
        """Add ids laid end to end (only their prefixes are kept)."""
        if not ids:
            return
        self.add_words(self.words(ids))

    @staticmethod
    def words(ids: bytes | memoryview) -> npt.NDArray[np.uint64]:
        """Ids laid end to end as what this set keeps of them: their prefixes."""
        # Every fourth big-endian 8-byte word, read in place: a walk adds a list blob at a time,
        # thousands of them, and `_prefixes`' copies cost more than the words themselves.
        return np.frombuffer(ids, dtype=">u8")[:: ID_SIZE // 8].astype(np.uint64)

    def add_words(self, keys: npt.NDArray[np.uint64]) -> None:
        """Add ids given as `words` gives them."""
        if not len(keys):
            return
        self._parts.append(keys)
        self._pending += len(keys)
        if self._pending >= COMPACT_AT:
            self.freeze()

    def freeze(self) -> npt.NDArray[np.uint64]:
        """The prefixes, sorted and unique."""
        if self._parts:
            fresh = _unique_numbers(np.concatenate(self._parts))
            self._parts, self._pending = [], 0
            if len(self._sorted):
                at = np.searchsorted(self._sorted, fresh)
                known = self._sorted[np.minimum(at, len(self._sorted) - 1)] == fresh
                fresh, at = fresh[~known], at[~known]
                if len(fresh):
                    self._sorted = np.insert(self._sorted, at, fresh)
            else:
                self._sorted = fresh
        return self._sorted

    def __len__(self) -> int:
        return len(self.freeze())

    def contains(self, ids: bytes | npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_]:
        """For ids (end to end, or ID_DTYPE): whether each one's prefix is in the set."""
        return self.find(ids)[0]

    def find(self, ids: bytes | npt.NDArray[np.bytes_]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """For ids: whether each one's prefix is in the set, and its place in `freeze()`'s array
        (meaningful where found): for columns kept beside the set."""
        query = np.frombuffer(ids, dtype=ID_DTYPE) if isinstance(ids, bytes) else ids
        have = self.freeze()
        if not len(have) or not len(query):
            return np.zeros(len(query), dtype=bool), np.zeros(len(query), dtype=np.intp)
        wanted = _prefixes(query)
        at = np.minimum(np.searchsorted(have, wanted), len(have) - 1)
        found: npt.NDArray[np.bool_] = have[at] == wanted
        return found, at


def _unique_numbers(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """`keys` sorted, each once. Sorted in place and masked: `np.unique` hashes them first, which
    took longer on the walk's batches (most of a batch repeats what the set holds)."""
    keys.sort()
    if len(keys) < 2:
        return keys
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


def _prefixes(ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint64]:
    """The first 8 bytes of each id as a number, in the ids' byte order."""
    head = np.ascontiguousarray(np.ascontiguousarray(ids).view(np.uint8).reshape(-1, ID_SIZE)[:, :8])
    keys: npt.NDArray[np.uint64] = head.view(">u8").ravel().astype(np.uint64)
    return keys


def _unique_keys(have: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint64] | None:
    """`_prefixes` of sorted ids, if no two share one (ids are keyed hashes: nearly always)."""
    keys = _prefixes(have)
    return None if len(keys) > 1 and bool((keys[1:] == keys[:-1]).any()) else keys


def find_sorted(
    have: npt.NDArray[np.bytes_],
    query: npt.NDArray[np.bytes_],
    keys: npt.NDArray[np.uint64] | None = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """For ids (ID_DTYPE) and sorted unique ids `have`: whether each is there, and where.

    Searched by the ids' first 8 bytes as numbers when no two of `have` share them (`keys`, made
    here if not given): numpy compares numbers many times faster than 32-byte strings. Each id
    found is then compared whole, so the answer is exact either way."""
    if not len(have):
        return np.zeros(len(query), dtype=bool), np.zeros(len(query), dtype=np.intp)
    query = np.ascontiguousarray(query)
    if keys is None or len(keys) != len(have):
        keys = _unique_keys(have)
    if keys is not None:
        wanted = _prefixes(query)
        if len(wanted) > SORT_QUERIES_FROM:
            # Looked up in order: a search that walks the keys forwards finds them in the cache.
            order = np.argsort(wanted)
            at = np.empty(len(wanted), dtype=np.intp)
            at[order] = np.searchsorted(keys, wanted[order])
        else:
            at = np.searchsorted(keys, wanted)
    else:
        at = np.searchsorted(have, query)
    at = np.minimum(at, len(have) - 1)
    # Compared as raw bytes, 8 at a time: numpy's S comparisons ignore trailing NULs, raw bytes do not.
    raw_have = have.view(np.uint64).reshape(-1, ID_SIZE // 8)[at]
    raw_query = query.view(np.uint64).reshape(-1, ID_SIZE // 8)
    found: npt.NDArray[np.bool_] = (raw_have == raw_query).all(axis=1)
    return found, at


def _sorted_unique(ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bytes_]:
    """`ids` sorted, each once. Not `np.unique`, whose hashing of a million 32-byte strings took over
    100 MB at once. Fixed-length 32-byte values compare exactly (trailing NULs are only ignored
    between values of different lengths)."""
    if len(ids) < 2:
        return np.sort(ids)
    # Sorted by the first 8 bytes as numbers (much faster than as strings); exact unless two
    # different ids share those, and then sorted as strings.
    keys = _prefixes(ids)
    order = np.argsort(keys, kind="stable")
    ids, keys = ids[order], keys[order]
    raw = ids.view(np.uint8).reshape(-1, ID_SIZE)
    same_key = keys[1:] == keys[:-1]
    same_id = same_key & (raw[1:] == raw[:-1]).all(axis=1)
    if bool((same_key & ~same_id).any()):
        ids = np.sort(ids)
        same_id = ids[1:] == ids[:-1]
    keep = np.empty(len(ids), dtype=bool)
    keep[0] = True
    np.logical_not(same_id, out=keep[1:])
    return ids[keep]


ListPlace = tuple[str, int]
"""Where a list blob sits in a snapshot: the entry's path and the list's place among its lists."""


class UsageWalker:
    """Adds the blobs of manifests to an IdSet, each tree and list blob read once across them.

    A list blob is compared with the one read last at the same place (the same file, the same
    place among its lists), and only the ids that differ there are added: every id of that earlier
    list is in the set already. A database's lists hold its pages in order, so consecutive
    snapshots' lists differ where pages changed, and walking them oldest first adds about what
    changed instead of every page of every snapshot again (the set then sorts in far fewer ids).
    Which ids end in the set does not depend on it."""

    def __init__(self, repo: Repository, used: IdSet | PrefixSet) -> None:
        self.repo = repo
        self.used = used
        self._trees: set[bytes] = set()
        self._lists: set[str] = set()
        self._last: dict[ListPlace, npt.NDArray[np.uint64]] = {}
        """The words of the list read last at each place."""

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
        lists: list[tuple[str, ListPlace]] = []
        for entry in entries:
            self.used.add(b"".join(bytes.fromhex(b) for b in entry.blobs + entry.blob_lists))
            lists.extend(
                (i, (entry.path, place)) for place, i in enumerate(entry.blob_lists) if i not in self._lists
            )
            self._lists.update(entry.blob_lists)
            if len(lists) >= LISTS_AT_ONCE:
                self._read_lists(lists)
                lists = []
        self._read_lists(lists)

    def _read_lists(self, lists: list[tuple[str, ListPlace]]) -> None:
        """Add the ids the list blobs hold. The lists are read a pack's span at a time, gaps
        included: a backup stores a database's lists among its other lists, seldom end to end,
        and one read apiece cost more than the bytes between them."""
        if not lists:
            return
        blob_ids = [bytes.fromhex(i) for i, _ in lists]
        places = dict(zip(blob_ids, (place for _, place in lists), strict=True))
        items: list[tuple[bytes, BlobLocation]] = []
        for blob_id, loc in zip(blob_ids, self.repo.index.locate_many(blob_ids), strict=True):
            if loc is None:
                raise BlobNotFound(f"blob {blob_id.hex()[:12]} is in no index; {NOT_INDEXED_ADVICE}")
            if loc.blob_type != BLOB_LIST:
                raise IntegrityError(f"blob {blob_id.hex()[:12]} is named as a list but holds data")
            items.append((blob_id, loc))
        items.sort(key=lambda item: (item[1].pack_id, item[1].offset))
        for span in _spans(items):
            first, last = span[0][1], span[-1][1]
            try:
                raw = memoryview(
                    self.repo.backend.read(
                        "data", first.pack_id, first.offset, last.offset + last.length - first.offset
                    )
                )
            except ObjectNotFound as e:
                raise BlobNotFound(f"pack {first.pack_id[:12]} is missing from the repository") from e
            for blob_id, loc in span:
                at = loc.offset - first.offset
                body = self.repo.open_blob(blob_id, loc, raw[at : at + loc.length])
                if len(body) % ID_SIZE:
                    raise IntegrityError(f"list blob {blob_id.hex()[:12]} has a broken length")
                self._add_list(places[blob_id], body)

    def _add_list(self, place: ListPlace, body: bytes | memoryview) -> None:
        """Add a list's ids: those that differ from the last list read at its place, if that one
        was as long, else all of them."""
        words = self.used.words(body)
        last = self._last.get(place)
        if last is not None and last.shape == words.shape:
            differ = words != last
            self.used.add_words(words[differ if differ.ndim == 1 else differ.any(axis=1)])
        else:
            self.used.add_words(words)
        self._last[place] = words


def _spans(items: list[tuple[bytes, BlobLocation]]) -> Iterator[list[tuple[bytes, BlobLocation]]]:
    """Located blobs sorted by pack and offset, cut where the pack changes or a read would pass
    SPAN_LIMIT bytes."""
    span: list[tuple[bytes, BlobLocation]] = []
    for item in items:
        loc = item[1]
        if span and (
            loc.pack_id != span[0][1].pack_id or loc.offset + loc.length - span[0][1].offset > SPAN_LIMIT
        ):
            yield span
            span = []
        span.append(item)
    if span:
        yield span
