"""Restoring a files snapshot: all of it, or the paths that match `--include`; `cat` of one file.

Two passes over the snapshot's entries. The first writes nothing: it authenticates every tree blob
it reads (all of them; with `--include` of a folder or a file, only those on the way to it and
under it, see `treesearch`), applies the rules of `entry_rules` that `verify` applies too (walk
order, no duplicates, no path through a file or a symbolic link of the snapshot), refuses any path
that would pass through anything under the target that is not a real folder, and finds what
already exists there. Only then does the second pass write: each file to a temporary name beside
its place, renamed once its length and SHA-256 match the manifest. Links are made last and never
followed; folders get their mode and time at the very end.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import os
import re
import secrets
import stat
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from capsule.adapters.directio import Readahead
from capsule.adapters.errors import NOT_INDEXED_ADVICE, BlobNotFound, DiskFull, RestoreRefused
from capsule.adapters.filedigest import sha256_file
from capsule.adapters.files.flush import (
    FLUSH_EACH_MAX,
    existing_ancestor,
    flush_each,
    folders_to_flush,
    sync_filesystem,
)
from capsule.adapters.files.tree import iter_entries
from capsule.adapters.files.treesearch import TreeSearch
from capsule.adapters.logs import get_logger
from capsule.adapters.partials import (
    PARTIAL_MARK,
    create_private,
    is_abandoned,
    make_partial,
    partial_done,
    partial_owner,
)
from capsule.adapters.repository.backends.storage import LocalPaths, local_paths
from capsule.adapters.repository.chunks import workers as thread_count
from capsule.adapters.repository.entry_rules import SPECIAL_BITS, check_content, check_follows, restored_mode
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import blob_batches, content_ids, locate_all, read_batch
from capsule.adapters.workers.restorepool import pack_files
from capsule.adapters.workers.sealpool import RestoreFile, SealPool, default_workers, open_request
from capsule.adapters.workers.sealworker import OPEN_ITEM
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, Manifest

log = get_logger(__name__)

CAT_BUFFER = 256 * 1024 * 1024  # `cat` checks a file this size or smaller before writing a byte
IN_FLIGHT_FILES = 256
KEEP_ENTRIES = 200_000  # entries the first pass keeps for the second (about 1 KiB each)
SYNC_EVERY = 256 * 1024 * 1024
POOL_FILE_LIMIT = 64 * 1024 * 1024  # files up to this size go to a worker process whole
POOL_MIN_BYTES = 16 * 1024 * 1024  # below this, starting the worker processes costs more than it saves
CLASHES_SHOWN = 5

Progress = Callable[[int, int], None]


# ---- --include ----------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            # A class never matches the separator: `*`, `?` and classes stay within one component.
            out.append(("[^/" if negate else "[") + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


_WILDCARDS = frozenset("*?[")


class Selection:
    """Which paths a restore takes: all of them, or those that match one of the glob patterns.

    `*` and `?` stay within one path component, `**` spans any number of them, `[abc]` is a class.
    A pattern that matches a folder takes everything under it.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = [self._clean(p) for p in patterns]
        self._regexes = [re.compile(_glob_regex(p)) for p in self.patterns]
        self.matched = [False] * len(self.patterns)

    @staticmethod
    def _clean(pattern: str) -> str:
        cleaned = pattern.strip().lstrip("/")
        while cleaned.startswith("./"):
            cleaned = cleaned[2:]
        cleaned = cleaned.rstrip("/")
        if not cleaned:
            raise RestoreRefused(
                f"the pattern {pattern!r} matches nothing; give a path or a glob like 'shoes/*.jpg'"
            )
        return cleaned

    @property
    def everything(self) -> bool:
        return not self.patterns

    def __call__(self, path: str) -> bool:
        if not self.patterns:
            return True
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        hit = False
        for number, regex in enumerate(self._regexes):
            if any(regex.fullmatch(p) for p in prefixes):
                self.matched[number] = True
                hit = True
        return hit

    def prefixes(self) -> list[list[str]] | None:
        """The folders (or files) every selected path lies at or under: each pattern's components
        up to its first wildcard, as `path_key` splits a path. None when any path may match (no
        pattern, or one that starts with a wildcard): then the whole snapshot is read."""
        if not self.patterns:
            return None
        found = []
        for pattern in self.patterns:
            parts = list(itertools.takewhile(lambda p: not _WILDCARDS.intersection(p), pattern.split("/")))
            if not parts:
                return None
            found.append(parts)
        return found

    def unmatched(self) -> list[str]:
        return [p for p, m in zip(self.patterns, self.matched, strict=True) if not m]


# ---- checks before anything is written ------------------------------------------------------------


@dataclass
class _Plan:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    already: set[str] = field(default_factory=set)
    clashes: list[str] = field(default_factory=list)
    clash_count: int = 0
    entries: list[Entry] | None = None


class _TargetCheck:
    """Is a relative path safe to write under `root`? Folders already checked are remembered."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: set[str] = {""}

    def folder(self, relative: str) -> None:
        """Refuse if an existing item on the way to `relative` is a link or not a folder."""
        if relative in self._folders:
            return
        parent, _, _ = relative.rpartition("/")
        self.folder(parent)
        try:
            st = os.lstat(self.root / relative)
        except FileNotFoundError:
            self._folders.add(relative)
            return
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(
                f"{self.root / relative} is a symbolic link; refusing to restore through it (it could "
                "lead out of the target folder)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{self.root / relative} is in the way: it is not a folder; move it away first")
        self._folders.add(relative)


def _same_file(entry: Entry, target: Path, st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_size == entry.size and sha256_file(target) == entry.sha256


def _entries(repo: Repository, manifest: Manifest, selection: Selection) -> Iterator[Entry]:
    """The entries a restore reads: every one, or, when each pattern names a folder or file to
    start from, only the tree blobs on the way to them and under them (`treesearch`)."""
    prefixes = selection.prefixes()
    if prefixes is None:
        return iter_entries(repo, manifest)
    return TreeSearch(repo, manifest).entries_under(prefixes)


def _check_entries(
    repo: Repository, manifest: Manifest, to: Path, selection: Selection, force: bool
) -> _Plan:
    """The first pass: validate the entries read (the whole snapshot, or with --include the tree
    blobs that hold what it picks and its folders) and what is under `to`; write nothing.

    The entries are kept for the second pass when there are not too many of them.
    """
    plan = _Plan()
    kept: list[Entry] | None = []
    check = _TargetCheck(to)
    previous: Entry | None = None
    for entry in _entries(repo, manifest, selection):
        if kept is not None:
            kept.append(entry)
            if len(kept) > KEEP_ENTRIES:
                kept = None  # the second pass reads the tree again: memory stays bounded
        check_follows(previous, entry)  # the entries read but left out by --include too
        previous = entry
        if not selection(entry.path):
            continue
        parent, _, _ = entry.path.rpartition("/")
        check.folder(parent)
        _plan_entry(plan, entry, to / entry.path, force)
    plan.entries = kept
    unmatched = selection.unmatched()
    if unmatched:
        raise RestoreRefused(
            f"nothing in the snapshot matches --include {unmatched[0]!r}; paths are relative to the "
            "snapshot's folder, e.g. 'shoes/red.jpg' or 'shoes/**/*.jpg'"
        )
    return plan


def _plan_entry(plan: _Plan, entry: Entry, target: Path, force: bool) -> None:
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    if entry.type == "dir":
        plan.dirs += 1
        if st is not None and not stat.S_ISDIR(st.st_mode):
            _clash(plan, f"{target} exists and is not a folder")
        return
    if entry.type == "symlink":
        plan.symlinks += 1
        if st is not None:
            if stat.S_ISLNK(st.st_mode) and os.readlink(target) == entry.target:
                plan.already.add(entry.path)
            elif stat.S_ISDIR(st.st_mode) or not force:
                _clash(plan, f"{target} already exists")
        return
    plan.files += 1
    plan.bytes += entry.size
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{target} is a symbolic link; refusing to write through it")
    if _same_file(entry, target, st):
        plan.already.add(entry.path)
    elif stat.S_ISDIR(st.st_mode) or not force:
        _clash(plan, f"{target} already exists")


def _clash(plan: _Plan, message: str) -> None:
    plan.clash_count += 1
    if len(plan.clashes) < CLASHES_SHOWN:
        plan.clashes.append(message)


# ---- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilesRestored:
    """What a files restore did."""

    files: int
    dirs: int
    symlinks: int
    bytes: int
    already_there: int
    """Files and links that were already in place with the snapshot's content, left untouched."""
    special_bits_cleared: int = 0
    """Files and folders written without the setuid or setgid bit their entry has."""


def write_file(repo: Repository, entry: Entry, target: Path) -> int:
    """Write `entry` to a temporary name beside `target`, check it, and rename it into place."""
    fd, tmp = make_partial(target, create_private)
    sha = hashlib.sha256()
    written = 0
    try:
        with open(fd, "wb", closefd=True) as f:
            for data in _file_batches(repo, entry):
                f.write(data)
                sha.update(data)
                written += len(data)
        check_content(entry, written, sha.hexdigest())
        os.chmod(tmp, entry.mode & 0o7777)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {target.parent} is full; free space and retry") from e
        raise
    finally:
        partial_done(tmp)
    return written


class _ToWorkers:
    """Files handed whole to the worker processes, in batches: one index look-up serves many files,
    and each request is built from plain lists (per-file numpy calls would cost more than the file).
    """

    BATCH = 64

    def __init__(self, repo: Repository, pool: SealPool, to: Path) -> None:
        self.repo = repo
        self.pool = pool
        self.to = str(to)
        self.entries: list[Entry] = []
        self._paths: dict[int, str] = {}
        self.packs: LocalPaths = pack_files(repo)
        self._serial = itertools.count()
        self._mark = f"{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(3)}-"
        self.readahead = Readahead()

    def _pack_path(self, number: int) -> str:
        path = self._paths.get(number)
        if path is None:
            pack = self.repo.index.pack_ids[number]
            path = self._paths[number] = os.path.abspath(self.packs.path_of("data", pack))
        return path

    def add(self, entry: Entry) -> list[tuple[Future[memoryview], Entry]]:
        self.entries.append(entry)
        return self.flush() if len(self.entries) >= self.BATCH else []

    def flush(self) -> list[tuple[Future[memoryview], Entry]]:
        entries, self.entries = self.entries, []
        ids_of = [[i for group in content_ids(self.repo, e) for i in group] for e in entries]
        all_ids = [i for ids in ids_of for i in ids]
        pos, packs, recs = self.repo.index.columns(all_ids)
        if (pos < 0).any():
            first = int(np.flatnonzero(pos < 0)[0])
            owner = next(
                e for e, n in zip(entries, itertools.accumulate(map(len, ids_of)), strict=True) if first < n
            )
            raise BlobNotFound(
                f"blob {all_ids[first].hex()[:12]} of {owner.path} is in no index; {NOT_INDEXED_ADVICE}"
            )
        columns = [
            packs.tolist(),
            *(recs[c].tolist() for c in ("offset", "type", "comp", "length", "plain", "within")),
        ]
        # The workers will read these while earlier batches are still being written: start now.
        self.readahead.ask(
            [(self._pack_path(n), o, ln) for n, o, ln in zip(columns[0], columns[1], columns[4], strict=True)]
        )
        files = []
        at = 0
        for entry, ids in zip(entries, ids_of, strict=True):
            local: dict[int, int] = {}
            paths: list[str] = []
            rows = []
            for k in range(at, at + len(ids)):
                number, offset, btype, comp, length, plain, within = (c[k] for c in columns)
                index = local.get(number)
                if index is None:
                    index = local[number] = len(paths)
                    paths.append(self._pack_path(number))
                rows.append(OPEN_ITEM.pack(index, offset, all_ids[k], btype, comp, length, plain, within))
            at += len(ids)
            final = f"{self.to}/{entry.path}"
            folder, _, name = final.rpartition("/")
            assert entry.sha256 is not None
            files.append(
                RestoreFile(
                    final=final,
                    tmp=f"{folder}/.{name}{self._mark}{next(self._serial)}",
                    mode=entry.mode,
                    mtime_ns=entry.mtime_ns,
                    size=entry.size,
                    sha256=entry.sha256,
                    request=open_request(paths, b"".join(rows)),
                )
            )
        return list(zip(self.pool.restore_files(files), entries, strict=True))


Owner = Literal["any", "mine", "gone"]


def remove_partial_writes(to: Path, *, owner: Owner = "any") -> int:
    """Delete the temporary files an interrupted restore left under `to`; return how many.
    `owner`: "any" (every one: the job's own earlier attempt left them), "mine" (this process's,
    as it exits on Ctrl-C), or "gone" (those whose process is gone, before a new restore)."""
    removed = 0
    for folder, dirs, names in os.walk(to):
        # A leftover link to a folder is listed among the folders (os.walk never follows it).
        for name in [*names, *dirs]:
            if not (name.startswith(".") and PARTIAL_MARK in name) or _is_real_folder(folder, name):
                continue
            if _owned(name, owner):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def _owned(name: str, owner: Owner) -> bool:
    if owner == "mine":
        return partial_owner(name) == os.getpid()
    return owner == "any" or is_abandoned(name)


def _is_real_folder(folder: str, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(folder, name)).st_mode)
    except FileNotFoundError:
        return False


def restore_files(
    repo: Repository,
    manifest: Manifest,
    to: Path,
    *,
    include: Sequence[str] = (),
    force: bool = False,
    special_bits: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
) -> FilesRestored:
    """Restore a files snapshot (or the part `include` selects) under `to`.

    Setuid and setgid bits are cleared unless `special_bits` asks for them (see `restored_mode`).

    Files go to worker processes whole (`workers` of them; 0 keeps everything in this process, on
    threads), each checked in memory before it is written; very large files are written here.
    """
    repo.ensure_index()
    to = to.resolve()
    selection = Selection(include)
    # Worker processes start while the snapshot is checked (a selection may need none of them).
    # The workers open packs by path: where the backend has none, threads here read its ranges.
    workers = workers if local_paths(repo.backend) is not None else 0
    early = workers != 0 and not include and manifest.totals.bytes >= POOL_MIN_BYTES
    pool = SealPool(repo.master_key, repo.compression_level, workers) if early else None
    try:
        plan = _check_entries(repo, manifest, to, selection, force)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    if plan.clashes:
        if pool is not None:
            pool.close()
        more = (
            f" and {plan.clash_count - len(plan.clashes)} more"
            if plan.clash_count > len(plan.clashes)
            else ""
        )
        raise RestoreRefused(
            f"{'; '.join(plan.clashes)}{more}; restore elsewhere with --to, or add --force to replace them"
        )
    top = existing_ancestor(to)
    to.mkdir(parents=True, exist_ok=True)
    selection = Selection(include)  # the first pass used up its record of matches
    folders: dict[str, Entry] = {}
    links: list[Entry] = []
    done = 0
    cleared = 0
    futures: deque[tuple[Future[int] | Future[memoryview], Entry]] = deque()
    # Files and links put in place by this process's threads, while few enough to flush one by one.
    written: list[str] | None = []

    def wrote(relative: str) -> None:
        nonlocal written
        if written is not None:
            written.append(relative)
            if len(written) > FLUSH_EACH_MAX:
                written = None  # the filesystem is flushed instead: keep no list of a large restore

    # The restore is flushed to disk as it goes, on a thread: with plenty of memory the kernel
    # would otherwise hold all of it until the final sync, and the restore would wait for it there.
    syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync")
    syncing: Future[None] | None = None
    synced = 0

    def settle(block: bool) -> None:
        nonlocal done, syncing, synced
        while futures and (block or futures[0][0].done()):
            future, entry = futures.popleft()
            future.result()
            done += entry.size
            if progress is not None:
                progress(done, plan.bytes)
            block = False if len(futures) < IN_FLIGHT_FILES else block
        if done - synced >= SYNC_EVERY and (syncing is None or syncing.done()):
            syncing, synced = syncer.submit(sync_filesystem, to), done

    made: set[str] = set()

    def make_folders(relative: str) -> None:
        if not relative or relative in made:
            return
        make_folders(relative.rpartition("/")[0])
        with contextlib.suppress(FileExistsError):
            os.mkdir(to / relative, 0o700)
        made.add(relative)

    if pool is None and workers != 0 and plan.bytes >= POOL_MIN_BYTES:
        # One more worker than cores: a worker waiting for a pack read or a new page of the page
        # cache leaves its core to another (see docs/performance.md, "One more restore worker than
        # cores").
        pool = SealPool(repo.master_key, repo.compression_level, workers or default_workers() + 1)
    to_workers = _ToWorkers(repo, pool, to) if pool is not None else None
    with ThreadPoolExecutor(max_workers=thread_count() + 1, thread_name_prefix="restore") as threads:
        try:
            for entry in plan.entries if plan.entries is not None else _entries(repo, manifest, selection):
                if entry.type == "dir":
                    folders[entry.path] = entry
                if not selection(entry.path):
                    continue
                if entry.type == "dir":
                    make_folders(entry.path)
                    continue
                make_folders(entry.path.rpartition("/")[0])
                if entry.type == "symlink":
                    links.append(entry)
                elif entry.path in plan.already:
                    done += entry.size
                else:
                    item = entry
                    if entry.mode & SPECIAL_BITS and not special_bits:
                        item = entry.model_copy(update={"mode": restored_mode(entry.mode, False)})
                        cleared += 1
                    if to_workers is not None and item.size <= POOL_FILE_LIMIT:
                        futures.extend(to_workers.add(item))
                    else:
                        futures.append((threads.submit(write_file, repo, item, to / item.path), item))
                        wrote(item.path)
                    settle(block=len(futures) >= IN_FLIGHT_FILES)
            if to_workers is not None:
                futures.extend(to_workers.flush())
            while futures:  # every file checked: settle(block=True) waits for the first one only
                settle(block=True)
        except BaseException:
            for future, _ in futures:
                future.cancel()
            raise
        finally:
            if pool is not None:
                pool.close()  # waits for the files the workers are still writing
            if to_workers is not None:
                to_workers.readahead.close()
    for entry in links:
        if entry.path in plan.already:
            continue
        assert entry.target is not None
        target = to / entry.path
        _, tmp = make_partial(target, functools.partial(_make_link, entry.target))
        try:
            with contextlib.suppress(OSError):  # not every system lets a link's own time be set
                os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            os.replace(tmp, target)
        finally:
            partial_done(tmp)
        wrote(entry.path)
    # Deepest first: setting a folder's time must come after everything inside it was written.
    for relative in sorted(made, key=lambda p: p.count("/"), reverse=True):
        folder = folders.get(relative)
        if folder is not None:
            cleared += bool(folder.mode & SPECIAL_BITS and not special_bits)
            os.chmod(to / relative, restored_mode(folder.mode, special_bits))
            os.utime(to / relative, ns=(folder.mtime_ns, folder.mtime_ns))
    syncer.shutdown(wait=True)
    if to_workers is None and written is not None:
        links_written = {e.path for e in links}
        flush_each(
            [to / p for p in written if p not in links_written], folders_to_flush(to, top, made, written)
        )
    else:
        sync_filesystem(to)
    already = len(plan.already)
    log.info(
        "files restored",
        to=str(to),
        files=plan.files,
        bytes=plan.bytes,
        already_there=already,
        special_bits_cleared=cleared,
    )
    return FilesRestored(plan.files, plan.dirs, plan.symlinks, plan.bytes, already, cleared)


def _make_link(link_target: str, path: Path) -> None:
    os.symlink(link_target, path)


# ---- cat -----------------------------------------------------------------------------------------


def find_entry(repo: Repository, manifest: Manifest, path: str) -> Entry:
    """The entry at `path` in a snapshot; RestoreRefused naming what to do if there is none."""
    wanted = path.strip().lstrip("/")
    entry = TreeSearch(repo, manifest).find(wanted)
    if entry is not None:
        return entry
    raise RestoreRefused(
        f"there is no {wanted!r} in this snapshot; paths are relative to its folder, e.g. 'shoes/red.jpg'"
    )


def cat_file(repo: Repository, manifest: Manifest, path: str, out: BinaryIO) -> Entry:
    """Write one file's bytes to `out`.

    A file up to CAT_BUFFER is checked whole (SHA-256) before its first byte is written; a larger
    one is written blob by blob, each authenticated, and checked whole at the end.
    """
    repo.ensure_index()
    entry = find_entry(repo, manifest, path)
    if entry.type != "file":
        raise RestoreRefused(
            f"{entry.path!r} is a {'folder' if entry.type == 'dir' else 'symbolic link'}, not a file"
        )
    sha = hashlib.sha256()
    buffered = entry.size <= CAT_BUFFER
    held: list[bytes] = []
    total = 0
    for data in _file_batches(repo, entry):
        sha.update(data)
        total += len(data)
        if buffered:
            held.append(data)
        else:
            out.write(data)
    check_content(entry, total, sha.hexdigest())
    for data in held:
        out.write(data)
    out.flush()
    return entry


def _file_batches(repo: Repository, entry: Entry) -> Iterator[bytes]:
    for batch in blob_batches(locate_all(repo, entry)):
        yield read_batch(repo, batch)
