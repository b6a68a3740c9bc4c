"""Capsule's own files are private: its folders 0700, its files 0600, whatever the umask it got.

Copies of the shop's database pass through Capsule's home in plaintext (the backup's copy, a
restore's staged copy, the safety copies), next to the event log and the key file. One mechanism
covers every file Capsule creates: a private umask for the whole process, set before anything is
written. Files that must end with another mode say so explicitly: a restored file gets its
snapshot's mode, and only once it is complete and verified (`adapters/repository/restore.py`,
`adapters/files/restore.py`).

A home made by an earlier version, or by hand, may already be open to everyone: it is tightened on
start, once, and a log line says what was changed.

The key files Capsule makes for itself (the event log's, the secrets') are written here too: one
line of hex, private, on disk before their name appears, never replacing one another process made.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

PRIVATE_UMASK = 0o077
OPEN_BITS = 0o077
SHOWN = 5  # paths named in the log line; the count says how many there were


def keep_private(home: Path) -> list[Path]:
    """Make every file and folder this process creates private, and tighten `home` if it is open.

    Returns what was tightened. Only what the running user owns is touched, and links are not
    followed: a link in the home could point at the shop's own files.
    """
    os.umask(PRIVATE_UMASK)
    tightened = tighten(home)
    if tightened:
        _log().info(
            "made Capsule's own files private",
            home=str(home),
            count=len(tightened),
            paths=[str(p) for p in tightened[:SHOWN]],
        )
    return tightened


def tighten(home: Path) -> list[Path]:
    """Remove group and other permissions from `home` and its first level; inside a folder that
    was open, from everything below it. A home that is already private costs a few `stat` calls."""
    tightened: list[Path] = []
    home = Path(os.path.realpath(home))  # a home that is a link to a folder: the folder counts
    if not _tighten_one(home, tightened):
        return tightened
    opened = home in tightened
    try:
        entries = list(os.scandir(home))
    except OSError:
        return tightened
    for entry in entries:
        path = Path(entry.path)
        was_open = _tighten_one(path, tightened) and path in tightened
        if entry.is_dir(follow_symlinks=False) and (was_open or opened):
            _tighten_tree(path, tightened)
    return tightened


def _tighten_tree(folder: Path, tightened: list[Path]) -> None:
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            _tighten_one(Path(parent, name), tightened)


def _tighten_one(path: Path, tightened: list[Path]) -> bool:
    """Tighten one file or folder of ours; False if it is missing or not ours to change."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if st.st_uid != os.getuid() or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return False
    if st.st_mode & OPEN_BITS:
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~OPEN_BITS)
            still_open = path.lstat().st_mode & OPEN_BITS
        except OSError as e:
            _log().warning("could not make a file private", path=str(path), error=e.strerror)
            return True
        if still_open:  # a file system without Unix permissions: nothing to do, nothing to say
            return True
        tightened.append(path)
    return True


def key_from_text(text: str, size: int) -> bytes | None:
    """The key a key file's text holds: one line of `2 * size` hex digits, after `#` comments;
    None when it holds anything else."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        key = bytes.fromhex(lines[0]) if len(lines) == 1 else b""
    except ValueError:
        return None
    return key if len(key) == size else None


def create_key_file(path: Path, header: str, size: int) -> None:
    """Write a new random key of `size` bytes to `path`, after the comment lines `header`: readable
    by its owner only, on disk before the name appears. A key another process made meanwhile is
    kept, never replaced. OSError when the folder cannot be written.

    The key's bytes come from `os.urandom`, as `secrets.token_bytes` takes them: `secrets` loads
    `random`, `base64` and `hmac` at the start of every command, which reads no key."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = folder / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as out:
            out.write(header + os.urandom(size).hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        # A link, not a rename: a key another process created meanwhile is kept, never replaced.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _log() -> Any:
    # structlog loads only when there is something to say: `capsule status` says nothing here.
    import structlog  # noqa: PLC0415

    return structlog.get_logger(__name__)
