"""The parent snapshot of a files backup: its entries in walk order, and which of them can be reused.

A backup in which nothing changed compares every item it finds with the parent's entry at its path
(100,000 of them for a shop of 100,000 images). The parent's tree blobs are parsed as plain JSON
(`RawGroup`), and a file is compared on the raw fields: building each entry's model, with its
checks, cost more than the rest of the comparison. A group whose entries all match is named again
as it is; an entry needed whole (in a group that changed, or kept after a read failed) comes from
its group's models, made and checked once for the group.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import structlog

from capsule.adapters.files.tree import PriorEntry, RawGroup, read_raw_groups, tree_ids
from capsule.adapters.repository.chunks import load_id_lists
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import Entry, Manifest

log = structlog.get_logger(__name__)

# The parent's groups whose files' blobs are looked up in one search of the index (about 2,000
# ids): a search costs much the same for 64 ids as for 4,096.
CHECKED_GROUPS = 32

# The members `exclude_defaults` leaves out of a tree blob, with their defaults.
_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in Entry.model_fields.items()
    if not field.is_required()
}


def checked_parent(repo: Repository, manifest: Manifest, not_stored: set[str]) -> Iterator[RawGroup]:
    """The parent snapshot's groups of entries in walk order. As groups are read, the paths of
    their files whose blobs are not all stored go into `not_stored`: one search of the index for
    CHECKED_GROUPS groups, before any of them is handed on. A pack may be gone without
    any index naming it as missing (`rebuild-index` after it was lost): an unchanged file is then
    read and stored again, never taken on trust from the parent."""
    groups = read_raw_groups(repo, tree_ids(repo, manifest))
    while some := list(itertools.islice(groups, CHECKED_GROUPS)):
        if not _all_stored(repo, some):
            priors = [PriorEntry(group, at, raw) for group in some for at, raw in enumerate(group.items)]
            _check_files(repo, priors, not_stored)
        yield from some


def _all_stored(repo: Repository, groups: list[RawGroup]) -> bool:
    """Whether every blob the entries of `groups` name directly is stored and none of them has a
    list blob: the usual case, in one search and without looking at the entries one by one."""
    try:
        hexes = "".join([h for g in groups for raw in g.items for h in raw.get("blobs", ())])
        named = bytes.fromhex(hexes)
    except (TypeError, ValueError):
        return False  # not what a backup writes: `_check_files` asks the model
    if any("blob_lists" in raw for g in groups for raw in g.items):
        return False
    return not named or bool(repo.known_joined(named).all())


def _check_files(repo: Repository, priors: list[PriorEntry], not_stored: set[str]) -> None:
    """Add to `not_stored` the files of `priors` that name a blob no pack holds; a large file's
    list blobs are opened and their ids checked too."""
    files = [p for p in priors if p.raw.get("type", "file") == "file"]
    try:
        lists = [(p, p.raw.get("blobs", []), p.raw.get("blob_lists", [])) for p in files]
        hexes = "".join([i for _, blobs, _ in lists for i in blobs])
        named = bytes.fromhex(hexes)
    except (TypeError, ValueError):
        # Not what a backup writes: the model says what is wrong (or takes it, and so do we).
        lists = [(p, p.model().blobs, p.model().blob_lists) for p in files]
        hexes = "".join([i for _, blobs, _ in lists for i in blobs])
        named = bytes.fromhex(hexes)
    known = repo.known_joined(named) if named else None
    if known is not None and not known.all():
        at = 0
        for p, blobs, _ in lists:
            if not known[at : at + len(blobs)].all():
                not_stored.add(p.path)
            at += len(blobs)
    for p, _, blob_lists in lists:
        if blob_lists and p.path not in not_stored:
            try:
                ids = bytes.fromhex("".join(blob_lists))
                stored = bool(repo.known_joined(ids).all()) and bool(
                    repo.known_joined(b"".join(load_id_lists(repo, blob_lists))).all()
                )
            except (CapsuleError, TypeError, ValueError):
                stored = False
            if not stored:
                not_stored.add(p.path)


def unchanged(raw: dict[str, Any], st: os.stat_result) -> bool:
    """Whether a file is taken to hold the same bytes as its entry in the parent snapshot, unread.

    Size, modification time, inode and change time must all match. A program can put a file's
    modification time back after rewriting it, but not its change time: the kernel sets that on
    every write, rename and chmod. A parent written before change times were recorded is compared
    without one, once; the new snapshot records it.
    """
    ctime = raw.get("ctime_ns")
    return (
        raw.get("type", "file") == "file"
        and raw.get("size", 0) == st.st_size
        and raw.get("mtime_ns") == st.st_mtime_ns
        and raw.get("inode") == st.st_ino
        and (ctime is None or ctime == st.st_ctime_ns)
    )


def same(raw: dict[str, Any], entry: Entry) -> bool:
    """Whether a parent's entry, as parsed, is `entry` (a folder or a link found again)."""
    explicit = {k: v for k, v in raw.items() if k not in _DEFAULTS or v != _DEFAULTS[k]}
    return explicit == entry.model_dump(mode="json", exclude_defaults=True)


def stored_tree(repo: Repository, parent: Manifest) -> set[bytes] | None:
    """The parent snapshot's tree blobs, if they and its list blobs are all in packs that are
    there (read and looked up together, once); else None: the backup then reads every file rather
    than fail half-way through the parent's entries."""
    try:
        lists_stored = all(repo.known_many([bytes.fromhex(i) for i in parent.tree]))
        ids = tree_ids(repo, parent) if lists_stored else []
        whole = lists_stored and all(repo.known_many(ids))
    except CapsuleError:
        whole = False
    if not whole:
        log.warning("the previous files snapshot lost part of its entries; every file is read again")
        return None
    return set(ids)
