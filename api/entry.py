"""The `capsule` command's entry point, as light as a module can be.

A backup of the product images needs the metadata of every file in the folder (name, size, time,
inode). On a server whose cache is cold, reading it from disk takes about as long as loading the
program's own modules (see docs/performance.md, "Reading the images folder's metadata early"),
so a small separate process starts reading it while the modules load: the backup's walk then finds
it cached. The process only looks (it follows no link, reads no file's content and writes nothing)
and runs at low priority.

On a cold cache the program's own files cost as much: some 700 modules, read one after the other as
they are imported. A command records the files it loaded (`startup_list`), and the next run of that
command asks the kernel for all of them at once on threads of its own, while the first modules
load (see docs/performance.md, "Reading ahead on a cold disk").
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import sys
import threading
import time

from capsule.orchestrator import collector

DEFAULT_UPLOADS = "data/uploads/products"
DEFAULT_HOME = "data/capsule"
WARM_THREADS = 2  # threads that ask for the listed files: opening one waits for its inode
STARTUP_LIST_DAYS = 1  # a list older than this is written again at the command's end
VALUED_OPTIONS = ("--log-level", "--log-format")  # options before the command that take a value

# Run with `python -S -c`: no site packages, nothing but `os` imported. It goes through the folders
# in the walk's order (depth first, names sorted), so that it stays ahead of the walk and the walk
# finds what it needs read already; in another order both wait on the disk for different folders
# (docs/performance.md, "Reading the images folder's metadata early").
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
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda entry: entry.name)
    except OSError:
        continue
    inside = []
    for entry in entries:
        try:
            entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                inside.append(entry.path)
        except OSError:
            pass
    folders.extend(reversed(inside))
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


def startup_list(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> str | None:
    """Where the files a command loads are listed, for its next run: the command's name in the
    home's cache folder (None for no command). Only a hint, so the home is the environment's or
    the default, never read from capsule.toml, which would take modules to parse."""
    command = None
    rest = iter(argv)
    for arg in rest:
        if arg in VALUED_OPTIONS:
            next(rest, None)
        elif not arg.startswith("-"):
            command = arg
            break
    if command is None or not command.replace("-", "").isalpha():
        return None
    home = environ.get("CAPSULE_HOME") or DEFAULT_HOME
    return os.path.join(home, "cache", f"startup-{command}")


def _warm(names: list[str]) -> None:
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone since (an upgrade): the import finds what is there now
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)


def warm_startup(path: str) -> bool:
    """Ask the kernel, on a thread, for every file listed at `path`; False if there is no list."""
    try:
        with open(path, encoding="utf-8") as f:
            names = f.read().splitlines()
    except (OSError, ValueError):
        return False
    for start in range(WARM_THREADS):
        share = names[start::WARM_THREADS]
        threading.Thread(target=_warm, args=(share,), name="warm-startup", daemon=True).start()
    return True


def loaded_files() -> list[str]:
    """The files this process loaded, in the order it imported them: its modules' compiled code
    (or their source, where none was compiled), then the shared libraries it mapped."""
    found: dict[str, None] = {}
    for module in list(sys.modules.values()):
        cached, source = getattr(module, "__cached__", None), getattr(module, "__file__", None)
        if isinstance(cached, str) and os.path.isfile(cached):
            found[cached] = None
        elif isinstance(source, str):
            found[source] = None
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
                found[fields[5].rstrip("\n")] = None
    return [name for name in found if os.path.isfile(name)]


def record_startup(path: str, now: float) -> None:
    """List the files this process loaded at `path` for the next run, if the home is there and the
    list is missing or old. Never fails the command."""
    with contextlib.suppress(OSError, ValueError):
        try:
            if now - os.stat(path).st_mtime < STARTUP_LIST_DAYS * 86400:
                return
        except FileNotFoundError:
            pass
        cache = os.path.dirname(path)
        if not os.path.isdir(os.path.dirname(cache)):
            return  # no home yet, or another one: not this hint's to make
        with contextlib.suppress(FileExistsError):
            os.mkdir(cache, 0o700)
        temp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(f"{name}\n" for name in loaded_files()))
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


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


_startup: str | None = None


def main() -> None:
    global _startup  # noqa: PLW0603 - one command, one list
    collector.hold_back()  # until a job's modules are loaded (capsule.orchestrator.collector)
    _startup = startup_list(sys.argv[1:], os.environ)
    if _startup is not None:
        warm_startup(_startup)
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
    if not code and _startup is not None:
        record_startup(_startup, time.time())
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None  # the interpreter says so, as it always has
    os._exit(code or 0)
