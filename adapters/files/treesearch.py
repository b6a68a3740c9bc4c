"""Reading only the part of a files snapshot that a path, or a pattern's leading folders, needs.

A files snapshot's tree blobs (groups) hold its entries in walk order, one group after the other,
so the group where a path would be is found by a binary search on the groups' first paths: about
log2(groups) tree blobs read where reading the whole tree reads them all (figures in
docs/performance.md, "One image back: `restore --include` and `cat` read the tree blobs on the way
to it"). Everything under a path follows it, so the entries under a folder are the groups from
there on until the first path beyond it.

What a restore reads this way it checks as a whole restore checks the whole snapshot: the groups it
takes are handed over in order, so that comparing each entry with the one before it (`check_follows`)
holds them to walk order; and the groups holding the path's folders come with them, so that a
path through a file or a link of the snapshot is refused as before. Entries in groups not read
cannot be restored by it; `verify` checks every group.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

from capsule.adapters.files.tree import ParentGroup, iter_entries, load_group, path_key, read_groups, tree_ids
from capsule.adapters.repository.repo import Repository
from capsule.domain.manifest import Entry, Manifest

Key = list[str]
WHOLE_GROUPS_READ = 2  # groups of one folder read one by one before the rest is read ahead


def beyond(key: Key, prefix: Key) -> bool:
    """Whether `key` comes after `prefix` and everything under it in walk order."""
    return key > prefix and key[: len(prefix)] != prefix


def folders_of(prefix: Key) -> list[Key]:
    return [prefix[:n] for n in range(1, len(prefix))]


def outermost(prefixes: Iterable[Key]) -> list[Key]:
    """The prefixes in walk order, without those under another one (its range holds theirs)."""
    kept: list[Key] = []
    for prefix in sorted(prefixes):
        if not kept or prefix[: len(kept[-1])] != kept[-1]:
            kept.append(prefix)
    return kept


class TreeSearch:
    """The groups of one files snapshot, read when a search or a range needs them.

    The groups a binary search reads are kept, so that the searches for a path's folders, which
    pass through the same groups, read each only once.
    """

    def __init__(self, repo: Repository, manifest: Manifest) -> None:
        self.repo = repo
        self.manifest = manifest
        self.ids = tree_ids(repo, manifest) if manifest.tree else []
        self._kept: dict[int, list[Entry]] = {}

    def _group(self, number: int) -> list[Entry]:
        group = self._kept.get(number)
        if group is None:
            group = self._kept[number] = load_group(self.repo, self.ids[number])
        return group

    def locate(self, key: Key) -> int:
        """The group from which entries at `key` and after it begin: the last one whose first
        path comes at or before `key` (0 if none does). Empty groups (a backup writes none) are
        passed over."""
        low, high = 0, len(self.ids) - 1
        while low < high:
            middle = (low + high + 1) // 2
            probe = middle
            while probe <= high and not self._group(probe):
                probe += 1
            if probe > high or key < path_key(self._group(probe)[0].path):
                high = middle - 1
            else:
                low = probe
        return low

    def find(self, path: str) -> Entry | None:
        """The entry at `path`, reading only the groups the search passes through."""
        if not self.manifest.tree:
            return next((e for e in self.manifest.entries if e.path == path), None)
        if not self.ids:
            return None
        key = path_key(path)
        for number in range(self.locate(key), len(self.ids)):
            group = self._group(number)
            for entry in group:
                if entry.path == path:
                    return entry
            if group and path_key(group[-1].path) > key:
                return None
        return None

    def entries_under(self, prefixes: Iterable[Key]) -> Iterator[Entry]:
        """The entries of the groups that hold every path at or under one of `prefixes`, and of the
        groups holding their folders, in walk order, each group once. An empty prefix (a pattern
        that starts with a wildcard) reads every group."""
        wanted = outermost(prefixes)
        if not self.manifest.tree or any(not prefix for prefix in wanted):
            yield from iter_entries(self.repo, self.manifest)
            return
        if not self.ids:
            return
        last = -1  # the last group handed over: groups go out in order, each once
        for prefix in wanted:
            for number in sorted({self.locate(folder) for folder in folders_of(prefix)}):
                if number > last:
                    yield from self._group(number)
                    last = number
            start = self.locate(prefix)
            if start <= last:
                if self._ends(last, prefix):
                    continue
                start = last + 1
            for number, group in self._run(start, prefix):
                yield from group
                last = number

    def _ends(self, number: int, prefix: Key) -> bool:
        group = self._kept.get(number) or []
        return bool(group) and beyond(path_key(group[-1].path), prefix)

    def _run(self, start: int, prefix: Key) -> Iterator[tuple[int, list[Entry]]]:
        """Groups from `start` on, to the first that reaches beyond `prefix`: the first few one by
        one (one image's folder is a group or two), the rest read ahead as a whole restore reads."""
        ahead: Generator[tuple[ParentGroup, list[Entry]], None, None] | None = None
        try:
            for number in range(start, len(self.ids)):
                if number in self._kept or number - start < WHOLE_GROUPS_READ:
                    group = self._group(number) if ahead is None else next(ahead)[1]
                else:
                    ahead = ahead or read_groups(self.repo, self.ids[number:])
                    group = next(ahead)[1]
                yield number, group
                if group and beyond(path_key(group[-1].path), prefix):
                    return
        finally:
            if ahead is not None:
                ahead.close()
