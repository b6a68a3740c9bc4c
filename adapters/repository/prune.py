"""Prune: delete the packs no snapshot needs and repack those mostly unused, while backups run on.

Four phases, each a function that a new process can run (after a kill, too) from the JSON-able
objects the earlier ones returned; each is safe to run again. The caller holds the shared `prune`
lock (lock.PRUNE) through each, and waits between `rewrite_index` and `finish_prune` until every
operation that could have loaded the old index has ended (`lock.lock_owners`/`owners_gone`, and the
backup jobs whose packs were stored but not yet committed).

1. `plan_prune` (reads only): lists the snapshot files, THEN loads every index file, finds every
   blob the snapshots use, and per pack the stored bytes that are used. Packs with nothing used are
   to be deleted; packs whose unused share passes the threshold are to be repacked; packs no index
   names (left by a killed backup) are garbage. Only packs older than KEEP_YOUNGER_THAN are ever
   condemned (see below).
2. `repack`: copies each used blob whose only indexed copy is in a condemned pack into new packs,
   authenticating it on the way, then writes one index file for the new packs.
3. `rewrite_index`: writes index files naming every pack of the plan's index files but the
   condemned ones; only the last of them supersedes the plan's index files, which are then removed.
4. `finish_prune`: every snapshot written since the plan is checked: a blob it needs that only a
   condemned pack holds rescues that pack (an index file names it again). The other condemned packs
   are deleted.

Why a kill is harmless anywhere: before the last new index file exists, the old index files are in
force and name every pack; the repack's packs are then unindexed or duplicates, which a later
prune collects. After it, the index names every kept pack and the repacked blobs, and no pack is
deleted before that. Deleting is last, and deleting a missing pack is no error.

Why a backup stays complete: a backup names a blob only if its own loaded index holds it. One that
loaded the index before the rewrite may name a blob of a condemned pack; the caller waits for it
to end, and `finish_prune` then sees its snapshot and rescues the pack. One that loads the index
after the rewrite never sees a condemned pack: its index files no longer name them, and a backup
adopts unindexed packs only if younger than rebuild.ADOPT_WITHIN, half the age a pack must have
to be condemned.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import structlog

from capsule.adapters.errors import IntegrityError, ObjectNotFound
from capsule.adapters.repository.backends.storage import ObjectInfo, TemporaryFiles
from capsule.adapters.repository.index import (
    Index,
    decode_index,
    encode_index,
    records,
)
from capsule.adapters.repository.pack import PackedBlob
from capsule.adapters.repository.pruneplan import (
    DEFAULT_REPACK_UNUSED_PERCENT,
    PrunePlan,
    PruneResult,
    PruneTotals,
    Repacked,
)
from capsule.adapters.repository.rebuild import ADOPT_WITHIN, read_pack_header
from capsule.adapters.repository.repacker import Repacker, Source
from capsule.adapters.repository.repo import INDEX_FLUSH_BLOBS, UNREADABLE_SNAPSHOT, Repository
from capsule.adapters.repository.usage import ID_DTYPE, IdSet, PrefixSet, UsageWalker
from capsule.domain.errors import CapsuleError, InvalidCommand
from capsule.domain.manifest import Manifest

__all__ = [
    "DEFAULT_REPACK_UNUSED_PERCENT",
    "KEEP_YOUNGER_THAN",
    "TEMPORARY_AGE",
    "Checkpoint",
    "PrunePlan",
    "PruneResult",
    "PruneTotals",
    "Repacked",
    "finish_prune",
    "plan_prune",
    "repack",
    "rewrite_index",
]

log = structlog.get_logger(__name__)

KEEP_YOUNGER_THAN = 2 * ADOPT_WITHIN
"""Seconds: a younger pack is never condemned (a backup may still adopt it, or index it)."""
REWRITE_FLUSH_BLOBS = INDEX_FLUSH_BLOBS
"""Records in each index file `rewrite_index` writes, but the last."""
REPACK_THREADS = 2
"""Threads that read and check the packs a repack copies from."""
REPACK_AHEAD = 4
"""Packs read and checked ahead of the one being copied, at most: the bytes they hold meanwhile
are bounded too, by the copier's read budget (`repacker.ReadBudget`)."""
REPACK_AHEAD_BYTES: int | None = None
"""The read budget: bytes of condemned packs read ahead of the copy (None: the pack size)."""
LOOKUP_AT_ONCE = 1 << 15
"""Records of a batch whose ids are copied, and looked up in the index, at once."""
TEMPORARY_AGE = 24 * 3600.0
"""Seconds: temporary files older than this were left by a killed writer."""

Checkpoint = Callable[[str], None]
"""Called with a fault point's name where a kill must be harmless (see docs/architecture.md)."""
Progress = Callable[[int, int], None]


def _nowhere(_name: str) -> None:
    pass


# ---- phase 1: the plan ---------------------------------------------------------------------


def _manifest(repo: Repository, name: str) -> Manifest | None:
    """A snapshot's manifest; None if it was forgotten meanwhile; a clear refusal if unreadable."""
    try:
        return repo.load_snapshot(name)
    except UNREADABLE_SNAPSHOT as e:
        if not repo.backend.exists("snapshots", name):
            return None
        raise IntegrityError(
            f"cannot prune: snapshot {name[:12]} cannot be read ({e}); what it needs is unknown, so "
            "nothing may be deleted: run `capsule verify`, then `capsule repair` (or upgrade Capsule "
            "if a newer one wrote it)"
        ) from e


def _used_ids(repo: Repository, names: list[str] | tuple[str, ...]) -> IdSet:
    """Every blob the named snapshots (those still there) use, whole; raises if one cannot be walked."""
    used = IdSet()
    _walk(repo, names, used)
    return used


def _used_prefixes(repo: Repository, names: list[str] | tuple[str, ...]) -> PrefixSet:
    """The first 8 bytes of every blob the named snapshots use: what the plan and the repack keep
    (8 bytes a blob; a prefix two ids share keeps both, never neither)."""
    used = PrefixSet()
    _walk(repo, names, used)
    return used


def _walk(repo: Repository, names: list[str] | tuple[str, ...], used: IdSet | PrefixSet) -> None:
    walker = UsageWalker(repo, used)
    manifests = [(name, m) for name in names if (m := _manifest(repo, name)) is not None]
    # Oldest first: the walker adds of each list only what differs from the list read before at
    # its place, so snapshots that follow one another in time add little.
    manifests.sort(key=lambda named: (named[1].time.timestamp(), named[0]))
    for name, manifest in manifests:
        try:
            walker.add(manifest)
        except CapsuleError as e:
            raise IntegrityError(
                f"cannot prune: snapshot {name[:12]} needs a tree or list blob that cannot be read "
                f"({e}); run `capsule verify`, then `capsule repair`"
            ) from e


def plan_prune(
    repo: Repository,
    *,
    repack_unused_percent: int = DEFAULT_REPACK_UNUSED_PERCENT,
    keep_younger_than: float = KEEP_YOUNGER_THAN,
    now: float | None = None,
    keep_used: bool = False,
) -> PrunePlan:
    """Decide what to delete and repack (reads only). See the module's description.

    `keep_used` keeps the set of used blobs in this process for the `repack` of this plan (which
    otherwise walks the snapshots again). `keep_younger_than` (seconds) below KEEP_YOUNGER_THAN lets
    a backup adopt a condemned pack: only for tests and tools that know no backup runs.
    """
    if not 0 <= repack_unused_percent <= 100:
        raise InvalidCommand(
            f"the repack threshold must be a percentage from 0 to 100, not {repack_unused_percent}"
        )
    now = time.time() if now is None else now
    before = now - keep_younger_than
    # Snapshots first: one written after this listing has its packs indexed before it, so they are
    # seen below; at worst they look unused, and finish_prune rescues them.
    snapshots = sorted(repo.backend.list("snapshots"))
    listed = _listing(repo) if keep_used else None
    damaged = repo.load_index(use_cache=False)
    if damaged:
        raise IntegrityError(
            f"cannot prune: {len(damaged)} index file(s) cannot be read (first {damaged[0][:12]}); "
            "the packs they name would look unused: run `capsule repair` first"
        )
    index = repo.index
    used = _used_prefixes(repo, snapshots)
    stats = _pack_stats(repo)
    on_disk = {name: info.size for name, info in stats.items()}
    gone = [i for i, p in enumerate(index.pack_ids) if p not in on_disk]
    # Which used prefixes a record in a pack on disk, chosen by the index, answers for: the others
    # are blobs no pack holds (counted for the report; a prefix shared with a stored blob may hide
    # one, so the unindexed packs below are checked by whole ids).
    present = np.zeros(len(used), dtype=bool)
    delete: list[str] = []
    repack_list: list[str] = []
    used_bytes = unused_bytes = reclaim = young = 0
    for number, used_here, total in _pack_shares(index, used, gone, present):
        pack_id = index.pack_ids[number]
        if pack_id not in on_disk:
            continue
        used_bytes += used_here
        unused_bytes += total - used_here
        if used_here == total:
            continue
        condemn = used_here == 0 or (total - used_here) * 100 > repack_unused_percent * total
        if not condemn:
            continue
        if stats[pack_id].modified >= before:
            young += 1
            continue
        if used_here == 0:
            delete.append(pack_id)
            reclaim += on_disk[pack_id]
        else:
            repack_list.append(pack_id)
            reclaim += total - used_here
    unindexed = sorted(set(on_disk) - set(index.pack_ids))
    for pack_id in unindexed:
        if stats[pack_id].modified >= before:
            young += 1
        elif _holds_unavailable(repo, pack_id, used, gone):
            log.warning(
                "a pack no index names holds blobs snapshots need; run `capsule rebuild-index`",
                pack=pack_id[:12],
            )
        else:
            delete.append(pack_id)
            reclaim += on_disk[pack_id]
    missing = int(len(present) - np.count_nonzero(present))
    if missing:
        log.warning("snapshots name blobs no pack holds; run `capsule verify`", blobs=missing)
    plan = PrunePlan(
        created=now,
        repack_unused_percent=repack_unused_percent,
        snapshots=tuple(snapshots),
        index_files=tuple(sorted(repo.loaded_index_files)),
        superseded=tuple(sorted(repo.superseded_index_files)),
        delete=tuple(sorted(delete)),
        repack=tuple(sorted(repack_list)),
        totals=PruneTotals(
            packs=len(on_disk),
            pack_bytes=sum(on_disk.values()),
            used_bytes=used_bytes,
            unused_bytes=unused_bytes,
            reclaim_bytes=reclaim,
            used_blobs=len(used),
            missing_blobs=missing,
            young_packs=young,
            unindexed_packs=len(unindexed),
        ),
    )
    if keep_used:
        _keep_used(plan, used, listed, index)
    log.info(
        "prune planned",
        delete=len(plan.delete),
        repack=len(plan.repack),
        reclaim_bytes=reclaim,
        young_packs=young,
    )
    return plan


def _table(numbers: list[int], count: int) -> npt.NDArray[np.bool_]:
    """A table of `count` packs, True at `numbers`, read with pack numbers (where `np.isin` would
    sort a copy of them)."""
    table = np.zeros(count, dtype=bool)
    table[numbers] = True
    return table


def _used_records(
    index: Index,
    used: PrefixSet,
    among: npt.NDArray[np.bool_] | None = None,
    present: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None = None,
) -> Iterator[tuple[npt.NDArray[np.void], npt.NDArray[np.int64], npt.NDArray[np.bool_]]]:
    """(records, their pack numbers, whether each is used) of every indexed record, whole packs a
    batch, in pack order; only those of the packs `among` marks, if given. A record is used if its
    id's prefix is in `used` and the index chooses its pack for that id (a blob in two packs is
    used in the one a reader's look-up returns; the other copy is garbage). `present`, (a column
    beside `used`'s sorted prefixes, a table of the packs gone from the disk), is marked where a
    used record in a pack on disk answers for a prefix.

    Ids are taken from a batch LOOKUP_AT_ONCE at a time: a look-up's whole records and the ids'
    copies are let go before the next, so that the peak is a batch and a slice's look-up."""
    shared = index.shared_keys()
    keys = used.freeze()
    for batch in index.pack_batches():
        recs, packs = batch, batch["pack"].astype(np.int64)
        if among is not None:
            keep = among[packs]
            recs, packs = recs[keep], packs[keep]
        if not len(recs):
            continue
        here = np.zeros(len(recs), dtype=bool)
        for at in range(0, len(recs), LOOKUP_AT_ONCE):
            ids = np.ascontiguousarray(recs["id"][at : at + LOOKUP_AT_ONCE]).view(ID_DTYPE).reshape(-1)
            found, places = used.find(ids)
            maybe = np.flatnonzero(found)
            if not len(maybe):
                continue
            # An id no other record shares a prefix with is in this record's pack only: the index
            # can choose nothing else, so only the others are looked up.
            chosen = np.ones(len(maybe), dtype=bool)
            if len(shared):
                ask = np.isin(keys[places[maybe]], shared)  # the prefixes, as the set holds them
                if ask.any():
                    which, numbers, _ = index.columns(ids[maybe[ask]].tobytes())
                    chosen[ask] = (which >= 0) & (numbers.astype(np.int64) == packs[at + maybe[ask]])
            here[at + maybe] = chosen
            if present is not None:
                column, gone = present
                column[places[maybe][chosen & ~gone[packs[at + maybe]]]] = True
        yield recs, packs, here


_kept_used: tuple[tuple[object, ...], PrefixSet] | None = None
"""The used blobs of the last plan made with `keep_used`, for its repack in this process."""
_kept_index: tuple[tuple[object, ...], Listing, Index] | None = None
"""The index that plan loaded, and the listing of index files and packs it was loaded from."""

Listing = tuple[tuple[str, ...], tuple[str, ...]]


def _listing(repo: Repository) -> Listing:
    """The names of the index files and of the packs: what an index loaded afresh is made from."""
    return tuple(sorted(repo.backend.list("index"))), tuple(sorted(repo.backend.list("data")))


def _plan_key(plan: PrunePlan) -> tuple[object, ...]:
    return (plan.created, plan.snapshots, plan.index_files)


def _keep_used(plan: PrunePlan, used: PrefixSet, listed: Listing | None, index: Index) -> None:
    global _kept_used, _kept_index  # noqa: PLW0603 - one slot each, for the next phase of the same prune
    _kept_used = (_plan_key(plan), used)
    _kept_index = (_plan_key(plan), listed, index) if listed is not None else None


def _load_index_kept(plan: PrunePlan) -> tuple[tuple[object, ...], Listing, Index] | None:
    """The index the plan kept in this process (then let go here), else None."""
    global _kept_index
    kept, _kept_index = _kept_index, None
    return kept if kept is not None and kept[0] == _plan_key(plan) else None


def _load_index(repo: Repository, plan: PrunePlan) -> None:
    """`repo`'s index, as loading every index file afresh gives it: the one the plan loaded in this
    process if the index files and packs are still those it was loaded from (listed before it
    was), else loaded again. Either way the kept one is let go.

    Reusing it is safe: an index is made only from those files, which never change under one name,
    and from which packs are on disk; a listing taken before the plan's load that still holds
    today means nothing was added or removed since (a file added between that listing and the
    load makes the listing differ now, so the index is loaded again)."""
    kept = _load_index_kept(plan)
    if kept is not None and kept[1] == _listing(repo):
        repo.adopt_index(kept[2])
        return
    repo.load_index(use_cache=False)


def _recall_used(plan: PrunePlan) -> PrefixSet | None:
    """The used blobs the plan kept in this process (then forgotten here), else None.

    Reusing them is safe: they are the blobs of the plan's snapshots when it was made, a superset
    of what those still there use (a snapshot forgotten since is only copied for nothing), and the
    repack asks the index it loads afresh where each one is."""
    global _kept_used
    kept, _kept_used = _kept_used, None
    return kept[1] if kept is not None and kept[0] == _plan_key(plan) else None


def _pack_stats(repo: Repository) -> dict[str, ObjectInfo]:
    """Size and time of every pack, each asked once; one removed meanwhile is left out."""
    stats: dict[str, ObjectInfo] = {}
    for name in repo.backend.list("data"):
        try:
            stats[name] = repo.backend.stat("data", name)
        except ObjectNotFound:
            continue
    return stats


def _pack_shares(
    index: Index, used: PrefixSet, gone: list[int], present: npt.NDArray[np.bool_]
) -> Iterator[tuple[int, int, int]]:
    """(pack number, used stored bytes, stored bytes) of every pack the index names, in pack order.
    A blob counts as used only in the pack the index chose for it (other copies are garbage); a
    bundle counts whole if a member is used. Marks in `present` (beside `used`'s sorted prefixes)
    those a used record in a pack not `gone` answers for. In numpy, a batch of whole packs at a
    time: no Python object per blob."""
    is_gone = _table(gone, len(index.pack_ids))
    for recs, batch_packs, batch_here in _used_records(index, used, present=(present, is_gone)):
        # One row per stored unit (a blob, or a bundle whole): its pack and offset. Sorted by one
        # number made of both (an offset is 32 bits): rows of one unit differ in nothing counted
        # here, so the order among them does not matter, and numpy's default sort is the fast one.
        order = np.argsort(
            (batch_packs.astype(np.uint64) << np.uint64(32)) | recs["offset"].astype(np.uint64)
        )
        packs, offsets, here = batch_packs[order], recs["offset"][order], batch_here[order]
        lengths = recs["length"][order].astype(np.int64)
        first = np.ones(len(packs), dtype=bool)
        first[1:] = (packs[1:] != packs[:-1]) | (offsets[1:] != offsets[:-1])
        starts = np.flatnonzero(first)
        unit_pack, unit_length = packs[starts], lengths[starts]
        unit_used = np.logical_or.reduceat(here, starts)
        pack_starts = np.flatnonzero(np.diff(unit_pack, prepend=-1))
        totals = np.add.reduceat(unit_length, pack_starts)
        used_bytes = np.add.reduceat(np.where(unit_used, unit_length, 0), pack_starts)
        yield from zip(unit_pack[pack_starts].tolist(), used_bytes.tolist(), totals.tolist(), strict=True)


def _holds_unavailable(repo: Repository, pack_id: str, used: PrefixSet, gone: list[int]) -> bool:
    """Whether an unindexed pack holds a blob that may be used (its prefix is in `used`) and that
    no pack on disk holds as the index's choice: compared by whole ids, so such a pack is kept
    whatever two prefixes share."""
    try:
        header = read_pack_header(repo, pack_id)
    except (CapsuleError, OSError):
        return False  # unreadable: it holds nothing a restore could use
    ids = np.frombuffer(b"".join(b.blob_id for b in header), dtype=ID_DTYPE)
    ids = ids[used.contains(ids)]
    if not len(ids):
        return False
    which, numbers, _ = repo.index.columns(ids.tobytes())
    is_gone = _table(gone, len(repo.index.pack_ids) + 1)  # -1 reads the last row
    return bool(((which < 0) | is_gone[np.where(which >= 0, numbers.astype(np.int64), -1)]).any())


# ---- phase 2: repack -----------------------------------------------------------------------


def repack(
    repo: Repository,
    plan: PrunePlan,
    progress: Progress | None = None,
    *,
    checkpoint: Checkpoint = _nowhere,
) -> Repacked:
    """Copy every blob the plan's snapshots use whose indexed copy is in a condemned pack into new
    packs (each authenticated first: a damaged one stops the prune with IntegrityError naming it,
    and nothing is deleted), then write one index file for the new packs only."""
    if not plan.condemned:
        _recall_used(plan)  # what the plan kept is let go: a service's process lives on
        _load_index_kept(plan)
        return Repacked()
    _load_index(repo, plan)
    index = repo.index
    used = _recall_used(plan)
    if used is None:
        used = _used_prefixes(repo, plan.snapshots)
    condemned = _table([i for i, p in enumerate(index.pack_ids) if p in plan.condemned], len(index.pack_ids))
    # Each used blob is copied from the pack the index chose for it, read from that pack's records
    # (whole ids): grouped by pack, the ids of each group sorted.
    id_parts: list[npt.NDArray[np.bytes_]] = []
    pack_parts: list[npt.NDArray[np.int64]] = []
    for recs, packs, here in _used_records(index, used, condemned):
        id_parts.append(np.ascontiguousarray(recs["id"][here]).view(ID_DTYPE).reshape(-1))
        pack_parts.append(packs[here])
    del used
    needed = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=ID_DTYPE)
    needed_packs = np.concatenate(pack_parts) if pack_parts else np.zeros(0, dtype=np.int64)
    order = np.argsort(needed, kind="stable")
    needed, needed_packs = needed[order], needed_packs[order]
    order = np.argsort(needed_packs, kind="stable")
    needed, needed_packs = needed[order], needed_packs[order]
    if len(needed) > 1:
        # A pack two index files name gives its records twice: each blob is copied once.
        again = np.zeros(len(needed), dtype=bool)
        again[1:] = (needed[1:] == needed[:-1]) & (needed_packs[1:] == needed_packs[:-1])
        needed, needed_packs = needed[~again], needed_packs[~again]
    starts = np.flatnonzero(np.diff(needed_packs.astype(np.int64), prepend=-1))
    ends = [*starts[1:].tolist(), len(needed)] if len(starts) else []
    copier = Repacker(repo, checkpoint, REPACK_AHEAD_BYTES)
    copied = 0
    sources = [
        (index.pack_ids[int(needed_packs[a])], needed[a:b])
        for a, b in zip(starts.tolist(), ends, strict=True)
    ]
    # Packs are read and checked on REPACK_THREADS threads (reading and opening tags let go of the
    # GIL), a few ahead within the copier's read budget (about a pack's worth of bytes); they are
    # copied in order on this one.
    with ThreadPoolExecutor(REPACK_THREADS, thread_name_prefix="repack") as pool:
        try:
            for done, source in enumerate(_ahead(pool, copier.open_source, sources), 1):
                copied += copier.add(source)
                if progress:
                    progress(done, len(sources))
        finally:
            copier.budget.close()  # a failed copy lets the readers waiting for room go (before the shutdown)
    result = copier.finish()
    left = len(needed) - copied
    if left:
        raise IntegrityError(
            f"cannot prune: {left} blob(s) the snapshots need are not in the packs the index names "
            "for them; nothing was deleted: run `capsule verify --read-data`"
        )
    return result


def _ahead(
    pool: ThreadPoolExecutor,
    work: Callable[[str, npt.NDArray[np.bytes_], int], Source | None],
    jobs: list[tuple[str, npt.NDArray[np.bytes_]]],
) -> Iterator[Source | None]:
    """`work` of each job on the pool, at most REPACK_AHEAD at once, the results in order; each
    job is given its place in that order (the ticket of the copier's read budget)."""
    pending: deque[Future[Source | None]] = deque()
    for ticket, job in enumerate(jobs):
        pending.append(pool.submit(work, *job, ticket))
        if len(pending) >= REPACK_AHEAD:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ---- phase 3: the index without the condemned packs -------------------------------------------


def rewrite_index(
    repo: Repository, plan: PrunePlan, repacked: Repacked, *, checkpoint: Checkpoint = _nowhere
) -> list[str]:
    """Write index files naming every pack of the plan's index files but the condemned ones, the
    last of them superseding the plan's index files; then remove those. Returns the new files
    (none when a run killed while removing them is finished)."""
    if not plan.condemned:
        return []
    present = set(repo.backend.list("index"))
    if repacked.index_file is not None and repacked.index_file not in present:
        raise IntegrityError(
            f"the index file the repack wrote ({repacked.index_file[:12]}) is missing; nothing was "
            "deleted: run the prune again from its start"
        )
    old = list(plan.index_files)
    if any(name not in present for name in old):
        # Only this phase removes index files while a prune lock is held, and only once the file
        # superseding them all is stored: the removal began, finish it.
        _remove(repo, [n for n in old if n in present], checkpoint)
        return []
    condemned = plan.condemned
    superseded = set(plan.superseded)
    written: list[str] = []
    batch: dict[str, npt.NDArray[np.void]] = {}
    seen: set[str] = set()
    count = 0
    for name in old:
        if name in superseded:
            continue
        packs, _ = decode_index(repo.load_sealed("index", name), name)
        for pack_id, recs in packs:
            if pack_id in condemned or pack_id in seen:
                continue
            seen.add(pack_id)
            batch[pack_id] = recs.copy()  # not a view: the file's whole plaintext is let go
            count += len(recs)
            if count >= REWRITE_FLUSH_BLOBS:
                written.append(repo.save_sealed("index", encode_index(batch, version=repo.version)))
                checkpoint("prune:index-written")
                batch, count = {}, 0
    written.append(repo.save_sealed("index", encode_index(batch, old, version=repo.version)))
    checkpoint("prune:index-superseding")
    _remove(repo, old, checkpoint)
    log.info("index rewritten without the condemned packs", files=len(written), removed=len(old))
    return written


def _remove(repo: Repository, names: list[str], checkpoint: Checkpoint) -> None:
    for name in names:
        repo.backend.remove("index", name)
        checkpoint("prune:old-index-removed")


# ---- phase 4: rescue, then delete ------------------------------------------------------------


def finish_prune(
    repo: Repository,
    plan: PrunePlan,
    repacked: Repacked,
    *,
    checkpoint: Checkpoint = _nowhere,
    now: float | None = None,
) -> PruneResult:
    """After the grace period: rescue the condemned packs that snapshots written since the plan
    need, delete the others, and remove temporary files older than TEMPORARY_AGE."""
    del repacked  # its packs are indexed: nothing here depends on them
    now = time.time() if now is None else now
    removed = 0
    if isinstance(repo.backend, TemporaryFiles):
        removed = repo.backend.remove_temporary(now - TEMPORARY_AGE)
    if not plan.condemned:
        return PruneResult(temporary_files_removed=removed)
    known = set(plan.snapshots)
    new = [n for n in sorted(repo.backend.list("snapshots")) if n not in known]
    condemned = plan.condemned
    if new:
        repo.load_index(use_cache=False)  # the rescue asks it which blobs the kept packs hold
    on_disk = set(repo.backend.list("data"))
    # A condemned pack an index names again (rescued by an earlier run, or indexed by a repair)
    # stays: deleting it would leave the index naming a missing pack.
    named = condemned & (set(repo.index.pack_ids) if new else _named_packs(repo))
    rescued = _rescue(repo, new, sorted((condemned - named) & on_disk), checkpoint) if new else []
    deleted: list[str] = []
    freed = 0
    for pack_id in sorted(condemned - named - set(rescued)):
        try:
            size = repo.backend.size("data", pack_id)
        except ObjectNotFound:
            continue
        repo.backend.remove("data", pack_id)
        deleted.append(pack_id)
        freed += size
        checkpoint("prune:pack-deleted")
    log.info("prune finished", deleted=len(deleted), freed_bytes=freed, rescued=len(rescued))
    return PruneResult(tuple(deleted), freed, tuple(rescued), len(new), removed)


def _named_packs(repo: Repository) -> set[str]:
    """The packs the index files name, as loading the index would find them (a superseded file's
    packs left out; an unreadable file logged, as there), without building the index: reading
    the files is all the delete step needs when no snapshot was written since the plan."""
    named: dict[str, list[str]] = {}
    superseded: set[str] = set()
    for name, packs, old in repo.decoded_index_files(repo.backend.list("index"), []):
        superseded.update(old)
        named[name] = [pack_id for pack_id, _ in packs]
    return {pack_id for name, packs in named.items() if name not in superseded for pack_id in packs}


def _rescue(repo: Repository, new: list[str], candidates: list[str], checkpoint: Checkpoint) -> list[str]:
    """The candidate packs holding a blob that a snapshot in `new` needs and no kept pack holds;
    an index file names them again before this returns."""
    headers: dict[str, list[PackedBlob]] = {}
    for pack_id in candidates:
        try:
            headers[pack_id] = read_pack_header(repo, pack_id)
        except (CapsuleError, OSError) as e:
            log.warning("a condemned pack cannot be read; not rescued", pack=pack_id[:12], error=str(e))
    # The walk reads tree and list blobs wherever they are, condemned packs included; whether a
    # blob is kept is asked of the index without them.
    reader = Repository(repo.backend, repo.config, repo.master_key)
    reader.load_index(use_cache=False)
    for pack_id, header in headers.items():
        reader.index.add_pack(pack_id, records(header))
    reader.index.freeze()
    used = _used_ids(reader, new)
    raw = used.tobytes()
    ids = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    lacking = IdSet()
    lacking.add(b"".join(i for i, kept in zip(ids, repo.index.contains_many(ids), strict=True) if not kept))
    if not len(lacking):
        return []
    rescue: dict[str, npt.NDArray[np.void]] = {}
    for pack_id, header in headers.items():
        if lacking.contains(b"".join(b.blob_id for b in header)).any():
            rescue[pack_id] = records(header)
    if rescue:
        repo.save_sealed("index", encode_index(rescue, version=repo.version))
        checkpoint("prune:rescued")
        log.warning(
            "packs kept: snapshots written during the prune need them", packs=[p[:12] for p in rescue]
        )
    return sorted(rescue)
