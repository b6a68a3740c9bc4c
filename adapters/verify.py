"""Verify: find every damaged or missing piece and say which snapshots and files it hurts.

Structure (always): config, keys, every index and manifest authenticate; every blob a snapshot needs
is indexed and its pack exists and is long enough. Data (`read_data`): every pack's SHA-256 matches its
name, its header authenticates and agrees with the index, and every blob decrypts to its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from adapters.chunks import load_id_lists
from adapters.files_tree import load_group
from adapters.repository.index import BlobLocation
from adapters.repository.pack import TRAILER, parse_header
from adapters.repository.repo import Repository
from domain.errors import CapsuleError
from domain.manifest import Entry, Manifest

log = structlog.get_logger(__name__)

NOT_INDEXED = "not-indexed"
LOST_PACK_ADVICE = (
    "; put it back from a copy of the repository if there is one, otherwise run "
    "`capsule rebuild-index` then `capsule backup --full`"
)


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


def _affected_by(
    repo: Repository, report: VerifyReport, classify: Classify, count: bool
) -> dict[str, set[tuple[str, str]]]:
    """Map each problem key that `classify` finds in a file's blobs to the (snapshot, path) hit.

    A list blob or tree blob is expanded and classified once and its result reused: snapshots
    share most of them, and memory stays bounded by one file's ids or one tree blob's entries.
    """
    seen = _Seen(repo, classify)
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
    return affected


class _Seen:
    """Classifies the blobs a manifest needs, remembering list and tree blobs already looked at."""

    def __init__(self, repo: Repository, classify: Classify) -> None:
        self.repo = repo
        self.classify = classify
        self.by_list: dict[str, set[str]] = {}
        self.by_tree: dict[bytes, list[tuple[str, set[str]]]] = {}

    def problems(self, manifest: Manifest) -> Iterator[tuple[str, set[str]]]:
        """(path, problem keys) for every entry of `manifest` that needs a damaged or missing blob."""
        if not manifest.tree:
            for entry in manifest.entries:
                if keys := self.entry(entry):
                    yield entry.path, keys
            return
        if keys := self.classify([bytes.fromhex(i) for i in manifest.tree]):
            yield "(the snapshot's list of tree blobs)", keys
        try:
            trees = load_id_lists(self.repo, manifest.tree)
        except CapsuleError:
            return  # the list blob itself is classified above
        for tree_id in trees:
            if tree_id not in self.by_tree:
                self.by_tree[tree_id] = self._tree(tree_id)
            yield from self.by_tree[tree_id]

    def _tree(self, tree_id: bytes) -> list[tuple[str, set[str]]]:
        if keys := self.classify([tree_id]):
            return [(f"(the entries in tree blob {tree_id.hex()[:12]})", keys)]
        try:
            entries = load_group(self.repo, tree_id)
        except CapsuleError:
            return []  # found when the packs are read
        direct = [bytes.fromhex(b) for e in entries for b in e.blobs + e.blob_lists]
        if not self.classify(direct) and not any(e.blob_lists for e in entries):
            return []
        return [(e.path, keys) for e in entries if (keys := self.entry(e))]

    def entry(self, entry: Entry) -> set[str]:
        keys = self.classify([bytes.fromhex(b) for b in entry.blobs + entry.blob_lists])
        for list_id in entry.blob_lists:
            if list_id not in self.by_list:
                try:
                    self.by_list[list_id] = self.classify(load_id_lists(self.repo, [list_id]))
                except CapsuleError:
                    self.by_list[list_id] = set()  # the list blob itself is classified above
            keys |= self.by_list[list_id]
        return keys


def _check_structure(repo: Repository, report: VerifyReport) -> None:
    pack_sizes = {name: repo.backend.size("data", name) for name in repo.backend.list("data")}
    report.packs = len(pack_sizes)

    def classify(ids: list[bytes]) -> set[str]:
        keys = set()
        for loc in repo.index.locate_many(ids):
            if loc is None:
                keys.add(NOT_INDEXED)
                continue
            size = pack_sizes.get(loc.pack_id)
            if size is None or loc.offset + loc.length > size - TRAILER.size:
                keys.add(loc.pack_id)
        return keys

    for key, affected in sorted(_affected_by(repo, report, classify, count=True).items()):
        if key == NOT_INDEXED:
            problem = Problem(
                "blobs",
                "needed by snapshots are in no index; run `capsule rebuild-index`, and if they are "
                "still missing their data is lost: run `capsule backup --full` to store it anew",
            )
        elif key in pack_sizes:
            problem = Problem(f"pack {key[:12]}", f"is shorter than the index says{LOST_PACK_ADVICE}")
        else:
            problem = Problem(f"pack {key[:12]}", f"is missing{LOST_PACK_ADVICE}")
        problem.affected = sorted(affected)
        report.problems.append(problem)


def _check_pack(
    repo: Repository, name: str, indexed: list[tuple[bytes, BlobLocation]], report: VerifyReport
) -> set[bytes]:
    """Read a whole pack; return the ids of the blobs in it that are damaged."""
    data = repo.backend.read("data", name)
    report.bytes_read += len(data)
    if hashlib.sha256(data).hexdigest() != name:
        report.problems.append(Problem(f"pack {name[:12]}", "does not match its name: damaged"))
    try:
        header = parse_header(repo.sealer, data, len(data), name)
    except CapsuleError as e:
        report.problems.append(Problem(f"pack {name[:12]}", f"{e}; its blobs were checked through the index"))
        header = []
    in_index = dict(indexed)
    for blob in header:
        loc = in_index.get(blob.blob_id)
        if loc is not None and loc[3:] != blob[3:]:
            report.problems.append(
                Problem(
                    f"pack {name[:12]}",
                    f"its header and the index disagree on blob {blob.blob_id.hex()[:12]}",
                )
            )
    if not indexed:  # a pack no index names (a backup that crashed): check what its header lists
        indexed = [(b.blob_id, BlobLocation(name, *b[1:])) for b in header]
    bad: set[bytes] = set()
    view = memoryview(data)
    # In pack order, so that a bundle is opened once for all of its members.
    for blob_id, loc in sorted(indexed, key=lambda item: (item[1].offset, item[1].within)):
        report.blobs += 1
        try:
            repo.open_blob(blob_id, loc, view[loc.offset : loc.offset + loc.length])
        except CapsuleError:
            bad.add(blob_id)
    return bad


def verify(repo: Repository, read_data: bool = False, progress: Progress | None = None) -> VerifyReport:
    report = VerifyReport()
    for name in repo.load_index(use_cache=False):  # every index file is read and checked
        report.problems.append(Problem(f"index {name[:12]}", "is damaged; run `capsule rebuild-index`"))
    _check_structure(repo, report)
    if not read_data:
        return report
    bad: dict[bytes, str] = {}
    on_disk = set(repo.backend.list("data"))
    done = 0
    for name, indexed in repo.index.by_pack():
        if name not in on_disk:
            continue  # reported by the structure check when a snapshot needs it
        for blob_id in _check_pack(repo, name, indexed, report):
            bad[blob_id] = name
        on_disk.discard(name)
        done += 1
        if progress:
            progress(done, done + len(on_disk))
    for name in sorted(on_disk):  # packs no index names: check what their own header lists
        _check_pack(repo, name, [], report)
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
