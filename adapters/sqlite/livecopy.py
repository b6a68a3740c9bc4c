"""Store a database copy while SQLite is still writing it.

Copying a gigabyte into memory first and storing it afterwards leaves the workers idle for the
seconds the copy takes. Instead the copy runs on a thread and the store follows it block by block.

What makes that safe is how SQLite's backup API writes a new copy: every page exactly once, in
ascending order, except the first page (the header), which it finishes last. On a file system that
reports unwritten stretches of a file as holes (`SEEK_HOLE`; tmpfs does, page by page), a block is
complete once it holds no hole and the file already has data past it. The first block, holding
the header, is stored last, once the copy is done. `reports_holes` checks a folder by trying it;
where it fails, the copy is made first and stored afterwards, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import threading
from pathlib import Path

import structlog

from capsule.adapters.sqlite.snapshot import CheckpointKeeper, DatabaseCopy, copy_database

log = structlog.get_logger(__name__)

PAGE = 4096  # the granularity at which tmpfs reports holes; data this far past a block proves it whole
POLL_SECONDS = 0.001
PROBE_BYTES = 8 * 1024 * 1024

_probed: dict[Path, bool] = {}


def reports_holes(directory: Path) -> bool:
    """Whether files in `directory` report exactly which 4 KiB pages were never written."""
    if directory in _probed:
        return _probed[directory]
    ok = False
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".holes-")
        try:
            os.unlink(name)
            # Large enough for huge pages (2 MiB), which would report whole stretches as written:
            # where the folder uses them, the probe sees that and the copy is not followed.
            os.ftruncate(fd, PROBE_BYTES)
            at = PROBE_BYTES // 2 + 2 * PAGE
            os.pwrite(fd, b"\x01" * PAGE, at)
            ok = (
                os.lseek(fd, 0, os.SEEK_DATA) == at
                and os.lseek(fd, 0, os.SEEK_HOLE) == 0
                and os.lseek(fd, at, os.SEEK_HOLE) == at + PAGE
            )
        finally:
            os.close(fd)
    except (OSError, AttributeError) as e:  # no SEEK_HOLE, or a file system that cannot say
        log.debug("holes not reported", directory=str(directory), error=str(e))
    _probed[directory] = ok
    return ok


class LiveCopy:
    """A consistent copy of a database that SQLite writes on a thread while its blocks are read."""

    def __init__(self, source: Path, target: Path, keeper: CheckpointKeeper | None = None) -> None:
        self.source = source
        self.target = target
        self.keeper = keeper
        self.expected: DatabaseCopy | None = None
        self._fd: int | None = None
        self._data_from, self._data_to = 1 << 62, 0  # [from, to) is known to be written
        self._started = threading.Event()
        self._done = threading.Event()
        self._result: DatabaseCopy | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="database-copy", daemon=True)

    def start(self) -> DatabaseCopy:
        """Start the copy; return what it will be (its `path` reads it while it grows)."""
        self._thread.start()
        self._started.wait()
        self._raise()
        assert self.expected is not None
        return self.expected

    def _run(self) -> None:
        try:
            self._result = copy_database(
                self.source, self.target, started=self._on_started, keeper=self.keeper
            )
        except BaseException as e:  # handed to the thread that waits for the copy
            self._error = e
        finally:
            self._done.set()
            self._started.set()

    def _on_started(self, expected: DatabaseCopy) -> None:
        self._fd = os.open(expected.path, os.O_RDONLY | os.O_CLOEXEC)
        # Workers in other processes read the copy through this descriptor, so it stays readable
        # after the file is removed.
        path = Path(f"/proc/{os.getpid()}/fd/{self._fd}")
        self.expected = dataclasses.replace(expected, path=path)
        self._started.set()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def ready(self, offset: int, length: int) -> bool:
        """Whether bytes [offset, offset+length) of the copy are final."""
        if self._done.is_set():
            self._raise()
            return True
        assert self._fd is not None
        end = offset + length + PAGE
        if self._data_from <= offset and end <= self._data_to:
            return True
        # Finding the next hole walks the data before it, so the walk resumes where the last one
        # stopped: written pages stay written, and blocks are asked for in ascending order.
        start = self._data_to if self._data_from <= offset <= self._data_to else offset
        try:
            hole = os.lseek(self._fd, start, os.SEEK_HOLE)
        except OSError:  # ENXIO: the file does not reach `start` yet
            return False
        if start == offset:
            self._data_from = offset
        self._data_to = hole
        return end <= hole

    def wait(self, offset: int, length: int) -> None:
        while not self.ready(offset, length):
            self._done.wait(POLL_SECONDS)

    def wait_done(self) -> None:
        self._done.wait()
        self._raise()

    def finish(self) -> DatabaseCopy:
        """Wait for the copy and return it as SQLite left it."""
        self.wait_done()
        assert self._result is not None
        return self._result

    def close(self) -> None:
        """Wait for the copy's thread (whatever happened) and let go of the copy."""
        self._thread.join()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
