"""The walk of a files backup: every item under a folder in walk order, with its lstat.

Walk order is depth first, the names of each folder sorted (`tree.path_key`). Folders are opened
without following links, one file descriptor each, each checked to be the folder that was listed
(its inode), so a link swapped in while the walk runs cannot lead it out of the root.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field


def describe(error: OSError) -> str:
    return error.strerror or type(error).__name__


Listed = list[tuple[str, os.stat_result | OSError]]


@dataclass
class Folder:
    """A folder opened and listed ahead of the walk: its descriptor, or why it could not be."""

    fd: int = -1
    items: Listed | None = None
    problem: str | None = None
    children: dict[str, Future[dict[str, Folder]]] = field(default_factory=dict)
    """Its subfolders, being opened and listed ahead on the threads, a few to a task."""
    partly: bool = False
    """Some subfolders were left for later: the budget of folders ahead ran out."""


def _list(fd: int) -> Listed:
    """(name, lstat or the error it raised) of every item in folder `fd`, sorted by name."""
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    listed: Listed = []
    for entry in entries:
        try:
            listed.append((entry.name, entry.stat(follow_symlinks=False)))
        except OSError as e:
            listed.append((entry.name, e))
    return listed


def _open_folder(parent_fd: int, name: str, inode: int) -> Folder:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as e:
        problem = f"the folder could not be opened ({describe(e)}); its contents are not backed up"
        return Folder(problem=problem)
    folder = Folder(fd=fd)
    try:
        if os.fstat(fd).st_ino != inode:
            folder.problem = "the folder was replaced while it was read; its contents are not backed up"
        else:
            folder.items = _list(fd)
    except OSError as e:
        folder.problem = f"the folder could not be read ({describe(e)}); its contents are not backed up"
    return folder


class Walk:
    """Everything under a folder in walk order; with `threads`, folders opened and listed ahead.

    By default the walking thread lists each folder itself when it gets there. Listing ahead on
    threads lets a cold disk serve several folders at once, but every item a listing thread
    examines is a hand-over of the interpreter lock with the walking thread, which the walk then
    waits for: over 100,000 small files with nothing changed, the backup took longer with threads
    than without, on a cold cache as on a warm one; a first backup, which reads every file anyway,
    gains a little from them (docs/performance.md, "One walking thread").
    With threads, each folder listed ahead has its own subfolders listed ahead in turn, up to
    AHEAD folders in all (each holds a descriptor until the walk is through it).
    """

    AHEAD = 512
    # Subfolders opened and listed by one task: each task handed to a thread costs the walk a
    # hand-over of the interpreter lock, and several tasks still keep the disk busy.
    PER_TASK = 16

    def __init__(
        self, warn: Callable[[str, str], None], leaving: Callable[[], None], threads: int = 0
    ) -> None:
        self.warn = warn
        self.leaving = leaving  # called before a folder's descriptor is closed
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="list") if threads else None
        self._budget = threading.Semaphore(self.AHEAD if threads else 0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _open(self, parent_fd: int, name: str, inode: int) -> Folder:
        folder = _open_folder(parent_fd, name, inode)
        self._look_ahead(folder)
        return folder

    def _open_some(self, parent_fd: int, wanted: list[tuple[str, int]]) -> dict[str, Folder]:
        return {name: self._open(parent_fd, name, inode) for name, inode in wanted}

    def _look_ahead(self, folder: Folder) -> None:
        """Open and list the subfolders of `folder` on the threads, as many as the budget allows;
        called again when the walk enters a folder left partly (`Walk.__call__`)."""
        pool = self._pool
        if pool is None:
            return
        wanted: list[tuple[str, int]] = []
        folder.partly = False
        for name, st in folder.items or ():
            if isinstance(st, os.stat_result) and stat.S_ISDIR(st.st_mode) and name not in folder.children:
                if not self._budget.acquire(blocking=False):
                    folder.partly = True  # tried again when the walk enters it, else opened there
                    break
                wanted.append((name, st.st_ino))
        for at in range(0, len(wanted), self.PER_TASK):
            some = wanted[at : at + self.PER_TASK]
            future = pool.submit(self._open_some, folder.fd, some)
            for name, _ in some:
                folder.children[name] = future

    def _done_with(self, folder: Folder, *, close: bool = True) -> None:
        """Close a folder once its subfolders opened ahead are finished with (they used its fd)."""
        for name, future in folder.children.items():
            child = future.result()[name]
            self._budget.release()
            self._done_with(child)
        folder.children = {}
        if close and folder.fd >= 0:
            os.close(folder.fd)

    def __call__(self, root_fd: int) -> Iterator[tuple[str, str, os.stat_result, int]]:
        """(relative path, name, lstat, folder fd): the folder's descriptor stays valid until the
        walk moves on, so open the item through it at once.

        A loop over a stack of folders, not nested generators: a `yield from` chain costs every
        item one step per level of depth.
        """
        try:
            root = Folder(fd=root_fd, items=_list(root_fd))
        except OSError as e:
            self.warn(".", f"the folder could not be read ({describe(e)}); nothing was backed up")
            return
        self._look_ahead(root)
        stack: list[tuple[Folder, str, Iterator[tuple[str, os.stat_result | OSError]]]] = [
            (root, "", iter(root.items or ()))
        ]
        try:
            while stack:
                folder, prefix, items = stack[-1]
                item = next(items, None)
                if item is None:
                    self.leaving()
                    stack.pop()
                    self._done_with(folder, close=bool(stack))  # the caller closes the root
                    continue
                name, st = item
                path = f"{prefix}/{name}" if prefix else name
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                    self.warn(shown, "skipped: its name is not valid UTF-8")
                    continue
                if not isinstance(st, os.stat_result):
                    what = (
                        "vanished while the folder was read"
                        if isinstance(st, FileNotFoundError)
                        else (f"could not be examined ({describe(st)})")
                    )
                    self.warn(path, f"skipped: it {what}")
                    continue
                yield path, name, st, folder.fd
                if not stat.S_ISDIR(st.st_mode):
                    continue
                future = folder.children.pop(name, None)
                if future is not None:
                    sub = future.result()[name]
                    self._budget.release()
                else:
                    sub = self._open(folder.fd, name, st.st_ino)
                if sub.problem is not None or sub.items is None:
                    self.warn(path, sub.problem or "the folder could not be read")
                    self._done_with(sub)
                    continue
                if sub.partly:
                    # When it was opened, the folders ahead were all taken (by the subfolders of
                    # folders before it); the walk has gone through some of them since.
                    self._look_ahead(sub)
                stack.append((sub, path, iter(sub.items)))
        finally:
            while stack:  # only after an error: close what is still open, innermost first
                folder, _, _ = stack.pop()
                self._done_with(folder, close=bool(stack))
