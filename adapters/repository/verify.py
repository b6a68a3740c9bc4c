"""Verify: find every damaged or missing piece and say which snapshots and files it hurts.

Structure (always): config, keys, every index and manifest authenticate; every blob a snapshot needs
is indexed and its pack exists and is long enough; every list blob and tree blob is read (they are
small), and each snapshot's entries are held to the rules restore applies (`entry_rules`: paths,
types, walk order, nothing under a file or a link, sizes against the index). A snapshot restore
would refuse is named with the first path that breaks a rule. Data (`read_data`): every pack's
SHA-256 matches its name, its header authenticates and agrees with the index, every blob decrypts
to its id, and every distinct file of a files snapshot has its recorded size and SHA-256.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog

from capsule.adapters.files.tree import load_group
from capsule.adapters.files.verify_contents import Contents
from capsule.adapters.repository.chunks import load_id_list, load_id_lists, read_id_lists, split_ids
from capsule.adapters.repository.crypto import ID_SIZE
from capsule.adapters.repository.entry_rules import check_database_snapshot, check_follows, check_size
from capsule.adapters.repository.pack import TRAILER
from capsule.adapters.repository.packcheck import PackCheck
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.verify_packs import all_packs, check_bundled_files
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import Entry, Manifest

log = structlog.get_logger(__name__)

NOT_INDEXED = "not-indexed"
LOST_PACK_ADVICE = (
    "; put it back from a copy of the repository if there is one, otherwise run `capsule repair`"
)
REPAIR_ADVICE = "; `capsule repair` sets it aside and keeps what is intact"


@dataclass
class Problem:
    """One thing wrong with the repository and what it affects."""

    subject: str
    message: str
    affected: list[tuple[str, str]] = field(default_factory=list)  # (snapshot id, path)

    def as_dict(self) -> dict[str, object]:
        return {
            "object": self.subject,
            "message": self.message,
            "affected": [{"snapshot": s, "path": p} for s, p in self.affected],
        }


@dataclass
class VerifyReport:
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


Progress = Callable[[int, int], None]
Classify = Callable[[list[bytes]], set[str]]
# For each list blob's ids end to end: their problem keys, and the plaintext bytes they hold by the
# index (None if one is not indexed). A Classify for many list blobs at once, looked up as arrays in
# one search, not one object per id nor one search per list.
Measure = Callable[[list[bytes]], list[tuple[set[str], int | None]]]
REFUSED = "would be refused by restore: "
LISTS_PER_SEARCH = 64  # list blobs of 256 ids each looked up together by the structure pass


def _affected_by(
    repo: Repository,
    report: VerifyReport,
    classify: Classify,
    count: bool,
    contents: Contents | None = None,
    *,
    measure: Measure | None = None,
) -> dict[str, set[tuple[str, str]]]:
    """Map each problem key that `classify` finds in a file's blobs to the (snapshot, path) hit.

    A list blob or tree blob is expanded and classified once and its result reused: snapshots
    share most of them, and memory stays bounded by one file's ids or one tree blob's entries.
    With `count` (the structure pass), each snapshot is also held to the rules restore applies
    to its entries, and the first one it breaks is reported, as restore would refuse it; the
    files of files snapshots go to `contents`, if given, for the data pass to check. `measure`
    (needed with `count`) classifies list blobs and gives the sizes the rules check.
    """
    seen = _Seen(repo, classify, rules=count, contents=contents, measure=measure)
    affected: dict[str, set[tuple[str, str]]] = {}
    for sid in sorted(repo.backend.list("snapshots")):
        try:
            manifest = repo.load_snapshot(sid)
        except CapsuleError as e:
            if count:
                report.problems.append(Problem(f"snapshot {sid[:12]}", str(e), [(sid, "(whole snapshot)")]))
            continue
        report.snapshots += int(count)
        for path, keys in seen.problems(manifest):
            for key in keys:
                affected.setdefault(key, set()).add((sid, path))
        if seen.broken is not None:
            path, message = seen.broken
            report.problems.append(Problem(f"snapshot {sid[:12]}", REFUSED + message, [(sid, path)]))
    return affected


@dataclass
class _Tree:
    """What one tree blob holds, as far as verify needs it again for every snapshot naming it."""

    problems: list[tuple[str, set[str]]]  # (path, keys) of its entries that need a bad blob
    broken: tuple[str, str] | None = None  # (path, message): the first rule its entries break
    first: Entry | None = None
    last: Entry | None = None


class _Seen:
    """Classifies the blobs a manifest needs, remembering list and tree blobs already looked at.

    With `rules`, also finds the first rule of `entry_rules` a manifest's entries break (in
    `broken` after `problems` has run): each tree blob's entries are checked once, and only the
    neighbours across its edges again for each snapshot.
    """

    def __init__(
        self,
        repo: Repository,
        classify: Classify,
        rules: bool = False,
        contents: Contents | None = None,
        measure: Measure | None = None,
    ) -> None:
        if rules and measure is None:
            raise ValueError("the rules need the sizes the list blobs hold: give `measure`")
        self.repo = repo
        self.classify = classify
        self.measure = measure
        self.rules = rules
        self.contents = contents
        self.by_list: dict[str, tuple[set[str], int | None]] = {}  # -> (keys, plaintext size)
        self.by_tree: dict[bytes, _Tree] = {}
        self.bodies: dict[str, bytes] = {}  # list blobs read ahead, not yet looked at
        self.broken: tuple[str, str] | None = None

    def problems(self, manifest: Manifest) -> Iterator[tuple[str, set[str]]]:
        """(path, problem keys) for every entry of `manifest` that needs a damaged or missing blob."""
        self.broken = None
        if self.rules and manifest.kind == "database":
            try:
                check_database_snapshot(manifest)
            except CapsuleError as e:
                self.broken = ("(the snapshot's entries)", str(e))
        if not manifest.tree:
            previous = None
            for entry in manifest.entries:
                if keys := self.entry(entry):
                    yield entry.path, keys
                if self.rules and self.broken is None:
                    stored = self._stored_sizes([entry])[0]
                    self.broken = self._break(manifest.kind == "files", previous, entry, stored)
                if self.contents is not None and manifest.kind == "files":
                    self.contents.add(entry)
                previous = entry
            return
        if keys := self.classify([bytes.fromhex(i) for i in manifest.tree]):
            yield "(the snapshot's list of tree blobs)", keys
            return
        try:
            trees = load_id_lists(self.repo, manifest.tree)
        except CapsuleError as e:
            self.broken = ("(the snapshot's list of tree blobs)", str(e))
            return
        last: Entry | None = None
        for tree_id in trees:
            if tree_id not in self.by_tree:
                self.by_tree[tree_id] = self._tree(tree_id)
            tree = self.by_tree[tree_id]
            yield from tree.problems
            if self.broken is None and tree.first is not None:
                self.broken = self._break(True, last, tree.first, None)
            if self.broken is None:
                self.broken = tree.broken
            last = tree.last or last

    @staticmethod
    def _break(
        in_walk_order: bool, previous: Entry | None, entry: Entry, stored: int | None
    ) -> tuple[str, str] | None:
        """(path, message) if `entry` breaks a rule after `previous`; None if it keeps them all.

        `stored` is the plaintext its blobs hold, None when unknown (a blob is missing: reported).
        """
        try:
            if in_walk_order:
                check_follows(previous, entry)
            if stored is not None:
                check_size(entry, stored)
        except CapsuleError as e:
            return entry.path, str(e)
        return None

    def _stored_sizes(self, entries: list[Entry]) -> list[int | None]:
        """For each entry, the plaintext bytes its blobs hold by the index (None if one is not
        indexed), with one look-up for all the blobs the entries name directly."""
        locs = iter(self.repo.index.locate_many([bytes.fromhex(b) for e in entries for b in e.blobs]))
        sizes: list[int | None] = []
        for entry in entries:
            direct = [next(locs) for _ in entry.blobs]
            total = None if None in direct else sum(loc.plain_length for loc in direct if loc is not None)
            for list_id in entry.blob_lists:
                size = self._list(list_id)[1]
                total = None if total is None or size is None else total + size
            sizes.append(total)
        return sizes

    def _list(self, list_id: str) -> tuple[set[str], int | None]:
        """A list blob's problem keys and, with `rules`, the plaintext its data blobs hold (None
        if unknown), read once whichever asks first."""
        if list_id not in self.by_list:
            try:
                body = self.bodies.pop(list_id, None)
                if body is None:
                    body = load_id_list(self.repo, list_id)
            except CapsuleError:
                self.by_list[list_id] = (set(), None)  # the list blob itself is classified
            else:
                # One look-up for both: a database's list blobs name every page.
                if self.measure is not None:
                    self.by_list[list_id] = self.measure([body])[0]
                else:
                    self.by_list[list_id] = (self.classify(split_ids(body)), None)
        return self.by_list[list_id]

    def _read_ahead(self, list_ids: list[str]) -> None:
        """Read a file's list blobs together, in runs: one at a time, a database's thousand list
        blobs cost a thousand reads, each a seek where the packs are not in the page cache."""
        if len(list_ids) < 2:
            return
        try:
            bodies = read_id_lists(self.repo, list_ids)
        except CapsuleError:
            self.bodies = {}  # each is read alone, and what is wrong with it is found then
            return
        if self.measure is None:
            self.bodies = dict(zip(list_ids, bodies, strict=True))
        else:  # a few dozen in one search: its records held in memory stay few
            for at in range(0, len(list_ids), LISTS_PER_SEARCH):
                part = slice(at, at + LISTS_PER_SEARCH)
                self.by_list.update(zip(list_ids[part], self.measure(bodies[part]), strict=True))

    def _tree(self, tree_id: bytes) -> _Tree:
        if keys := self.classify([tree_id]):
            return _Tree([(f"(the entries in tree blob {tree_id.hex()[:12]})", keys)])
        where = f"(the entries in tree blob {tree_id.hex()[:12]})"
        try:
            entries = load_group(self.repo, tree_id)
        except CapsuleError as e:
            # Reading it authenticates it: a damaged tree blob is found without --read-data.
            return _Tree([], (where, str(e)) if self.rules else None)
        tree = _Tree([], None, entries[0] if entries else None, entries[-1] if entries else None)
        if self.rules:
            previous = None
            for entry, stored in zip(entries, self._stored_sizes(entries), strict=True):
                tree.broken = self._break(True, previous, entry, stored)
                if tree.broken is not None:
                    break
                previous = entry
        if self.contents is not None:
            for entry in entries:
                self.contents.add(entry)
        direct = [bytes.fromhex(b) for e in entries for b in e.blobs + e.blob_lists]
        if not self.classify(direct) and not any(e.blob_lists for e in entries):
            return tree
        tree.problems = [(e.path, keys) for e in entries if (keys := self.entry(e))]
        return tree

    def entry(self, entry: Entry) -> set[str]:
        keys = self.classify([bytes.fromhex(b) for b in entry.blobs + entry.blob_lists])
        self._read_ahead([i for i in entry.blob_lists if i not in self.by_list])
        for list_id in entry.blob_lists:
            keys |= self._list(list_id)[0]
        return keys


def _check_structure(repo: Repository, report: VerifyReport, contents: Contents | None) -> None:
    pack_sizes = {name: repo.backend.size("data", name) for name in repo.backend.list("data")}
    report.packs = len(pack_sizes)
    index = repo.index
    # By pack number: where the last blob may end (the trailer follows it); -1 for a missing pack,
    # so that every blob placed in it is beyond.
    ends = np.zeros(0, dtype=np.int64)

    def measure(lists: list[bytes]) -> list[tuple[set[str], int | None]]:
        nonlocal ends
        which, packs, recs = index.columns(b"".join(lists))
        if len(ends) != len(index.pack_ids):
            ends = np.array(
                [pack_sizes.get(p, TRAILER.size - 1) - TRAILER.size for p in index.pack_ids], dtype=np.int64
            )
        bounds = np.cumsum([0, *(len(ids) // ID_SIZE for ids in lists)])
        which_list = np.repeat(np.arange(len(lists)), np.diff(bounds))
        found = which >= 0
        plain = np.cumsum(np.concatenate([[0], recs["plain"].astype(np.int64)]))
        sizes = (plain[bounds[1:]] - plain[bounds[:-1]]).tolist()
        missing = np.bincount(which_list[~found], minlength=len(lists)).tolist()
        beyond = np.zeros(len(found), dtype=bool)
        beyond[found] = recs["offset"][found].astype(np.int64) + recs["length"][found] > ends[packs[found]]
        keys: list[set[str]] = [{NOT_INDEXED} if m else set() for m in missing]
        for k, number in zip(which_list[beyond].tolist(), packs[beyond].tolist(), strict=True):
            keys[k].add(index.pack_ids[number])
        return [(kk, None if m else size) for kk, m, size in zip(keys, missing, sizes, strict=True)]

    def classify(ids: list[bytes]) -> set[str]:
        return measure([b"".join(ids)])[0][0]

    affected_by = _affected_by(repo, report, classify, True, contents, measure=measure)
    for key, affected in sorted(affected_by.items()):
        if key == NOT_INDEXED:
            problem = Problem(
                "blobs",
                "needed by snapshots are in no index; run `capsule rebuild-index`, and if they are "
                "still missing their data is lost: run `capsule repair`",
            )
        elif key in pack_sizes:
            problem = Problem(f"pack {key[:12]}", f"is shorter than the index says{LOST_PACK_ADVICE}")
        else:
            problem = Problem(f"pack {key[:12]}", f"is missing{LOST_PACK_ADVICE}")
        problem.affected = sorted(affected)
        report.problems.append(problem)


def _take_pack(
    report: VerifyReport, contents: Contents, bad: dict[bytes, str], name: str, check: PackCheck
) -> None:
    """Report what one pack's check found; its damaged blobs go to `bad`, with the pack's name."""
    report.bytes_read += check.size
    report.blobs += check.blobs
    if not check.name_matches:
        report.problems.append(
            Problem(f"pack {name[:12]}", f"does not match its name: damaged{REPAIR_ADVICE}")
        )
    if check.header_error is not None:
        report.problems.append(
            Problem(f"pack {name[:12]}", f"{check.header_error}; its blobs were checked through the index")
        )
    for blob_id in check.disagree:
        report.problems.append(
            Problem(f"pack {name[:12]}", f"its header and the index disagree on blob {blob_id.hex()[:12]}")
        )
    for blob_id in check.bad:
        bad[blob_id] = name
    for blob_id, size, digest in check.found:
        contents.found(blob_id, size, digest.hex())


def verify(
    repo: Repository, read_data: bool = False, progress: Progress | None = None, workers: int | None = None
) -> VerifyReport:
    """Check `repo`; with `read_data`, every pack too, on `workers` processes (None: as many as
    pays, 0: this one)."""
    report = VerifyReport()
    for name in repo.load_index(use_cache=False):  # every index file is read and checked
        report.problems.append(Problem(f"index {name[:12]}", "is damaged; run `capsule rebuild-index`"))
    if not read_data:
        _check_structure(repo, report, None)
        return report
    contents = Contents()
    repo.index.freeze()  # read-only from here: both passes search it at once
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="verify-packs") as packs:
        # The workers check packs while this thread walks the snapshots (see verify_packs.py).
        checks = packs.submit(all_packs, repo, workers, progress, stop)
        try:
            _check_structure(repo, report, contents)
        except BaseException:
            stop.set()  # an error or Ctrl-C here: the pack pass stops after the packs under way
            raise
    bad: dict[bytes, str] = {}
    for name, check in checks.result():
        _take_pack(report, contents, bad, name, check)
    check_bundled_files(repo, contents, bad)
    report.bytes_read += contents.read_several(repo)
    for sid, path, message in contents.refused(repo):
        report.problems.append(Problem(f"snapshot {sid[:12]}", REFUSED + message, [(sid, path)]))
    if bad:

        def classify(ids: list[bytes]) -> set[str]:
            return {bad[i] for i in ids if i in bad}

        affected = _affected_by(repo, report, classify, count=False)
        for pack in sorted(set(bad.values())):
            hit = sorted(affected.get(pack, ()))
            message = (
                "holds blobs that fail authentication: their data is damaged"
                if hit
                else "holds damaged blobs that no snapshot needs"
            )
            report.problems.append(Problem(f"pack {pack[:12]}", message, hit))
    return report
