"""The `capsule` command's entry point, as light as a module can be.

A backup of the product images needs the metadata of every file in the folder (name, size, time,
inode). On a server whose cache is cold, reading it from disk takes about as long as loading the
program's own modules (see docs/performance.md, "Reading the images folder's metadata early"),
so a small separate process starts reading it while the modules load: the backup's walk then finds
it cached. The process only looks (it follows no link, reads no file's content and writes nothing)
and runs at low priority.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import sys
import threading

from capsule.orchestrator import collector

DEFAULT_UPLOADS = "data/uploads/products"

# Run with `python -S -c`: no site packages, nothing but `os` imported.
_LOOK = """
import os, sys
try:
    os.nice(10)
except OSError:
    pass
folders = [sys.argv[1]]
while folders:
    folder = folders.pop()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                except OSError:
                    pass
    except OSError:
        pass
"""


def folder_to_look_at(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> str | None:
    """The images folder a `backup` command line will walk, or None if it walks none."""
    if "backup" not in argv:
        return None
    kind = "database"
    rest = argv[argv.index("backup") + 1 :]
    for position, arg in enumerate(rest):
        if arg == "--kind" and position + 1 < len(rest):
            kind = rest[position + 1]
        elif arg.startswith("--kind="):
            kind = arg.partition("=")[2]
    if kind not in ("files", "all"):
        return None
    return environ.get("CAPSULE_UPLOADS") or DEFAULT_UPLOADS


MMAP_THRESHOLD = 1024 * 1024  # bytes: larger allocations get pages of their own, handed back when freed
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fixed_mmap_threshold() -> None:
    """Give every allocation of a megabyte or more its own mapping, handed back when it is freed.

    glibc otherwise raises that threshold to the size of any large block freed (up to 32 MiB),
    after which the 16 MiB packs come from the heap, and the heap keeps what they leave behind:
    peak RSS grew with every pack a backup wrote. Fixing the threshold lowered the peak (see
    docs/performance.md, "glibc's mmap threshold"). A lower threshold saves a little more, but every
    sealed run would then map fresh memory, which costs time here. The workers keep glibc's default.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to fix
        import ctypes  # noqa: PLC0415 - only here, at start-up

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def end_look(pid: int) -> None:
    """Stop the process that looks at the folder, if it still runs, once the command ends: it is
    only a head start, and nothing of the command should outlive it."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)


def main() -> None:
    collector.hold_back()  # until a job's modules are loaded (capsule.orchestrator.collector)
    folder = folder_to_look_at(sys.argv[1:], os.environ)
    if folder is not None and os.path.isdir(folder):
        with contextlib.suppress(OSError):  # only a head start: the backup reads the folder anyway
            look = os.posix_spawn(sys.executable, [sys.executable, "-S", "-c", _LOOK, folder], os.environ)
            atexit.register(end_look, look)
    # numpy's BLAS threads are never used here, yet they wake and spin beside the workers.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    fixed_mmap_threshold()
    from capsule.api.cli import main as run  # noqa: PLC0415 - the point of this module is to come first

    # The modules' own objects live as long as the program: the collector need not scan them again.
    gc.freeze()
    try:
        run()
    except SystemExit as e:
        leave(e.code)
    leave(0)


def leave(code: object) -> None:
    """End the process as the interpreter would, without taking every module apart first.

    At its exit the interpreter waits for the threads that are not daemons, runs what `atexit`
    holds (logging's last flush, multiprocessing's clean-up, `weakref.finalize`), flushes stdout
    and stderr, and then tears down every module and object one by one: for a job's process,
    some 700 modules, about a tenth of its processor time (see docs/performance.md, "Start-up: what
    a reading command and a job's process pay before their work").
    This does the first three and ends the process. Whenever it cannot do exactly what the
    interpreter would (another thread still runs, an exit status that is not a number, a stream
    that cannot be flushed), it leaves the exit to the interpreter.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or not (code is None or isinstance(code, int)):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None  # the interpreter says so, as it always has
    os._exit(code or 0)
