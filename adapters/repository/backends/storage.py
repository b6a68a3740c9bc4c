"""The storage contract: what the repository engine asks of the place a repository is kept.

A repository is a set of immutable objects grouped by kind (`config`, `keys`, `data`, `index`,
`snapshots`, `locks`; `damaged` after a repair, `eventlog` on a destination); nothing is modified
in place. Any store that can do what `Backend` lists can
hold one: a local folder (`LocalBackend`), memory (`MemoryBackend`, for tests), and later a folder
on a mounted disk, Google Drive or an S3-like service. The engine (`Repository`, the keys, the locks,
index rebuild, verify and restore) is typed against `Backend` alone and never sees a path.

The contract every backend keeps:

- Names are checked by `check_name`: lowercase letters, digits, `-` and `_`, at most 128 of them (in
  practice lowercase hex, or `config`). Anything else (`../x`, `/abs`, `a/b`, `.tmp`, empty) is
  refused with `UnsafePath` before the store is touched.
- `write` stores a whole object atomically: a reader sees all of the new bytes or none of them, and
  writing an existing name replaces it the same way.
- `read` returns a byte range (`offset`, `length`; to the end when `length` is None; a range past
  the end is cut short, as a file read is; a negative one is a ValueError). `read_tail` returns
  the size and the last bytes.
- `list(kind)` yields the names stored under `kind`, in no particular order; a write that has
  returned is listed (the locks need that: a Drive backend lists without a cache).
- `remove` deletes; deleting a missing object is not an error.
- `stat` gives the size and the time of the last write (an unreadable lock expires by its age).

Errors, as Capsule's error categories (domain/errors.py):

- a missing object: `ObjectNotFound` (NOT_FOUND; also a `FileNotFoundError`);
- the store cannot be reached or read now: `StorageUnavailable` (UNAVAILABLE); its `retryable`
  says whether trying again later may succeed (a network store's rate limit, a timeout);
- the store is full: `DiskFull` (UNAVAILABLE);
- the store may not be written: `RepositoryReadOnly` (REFUSED), which `not_writable` turns into the
  one sentence an operation that writes reports;
- a name that is not an object's name: `UnsafePath` (REFUSED).

`describe()` names the repository's location in messages (a folder, a Drive folder's name); no
message uses a path of the backend's own.

Optional capabilities are separate small Protocols, checked with `isinstance`, each with a fallback
through the plain contract:

- `LocalPaths` (`path_of`): objects are files on this machine. Worker processes then read packs by
  path themselves (with direct I/O and read-ahead, see capsule.adapters.directio) and a restore goes
  through them; without it, restore reads ranges through `read` on threads of this process.
- `CostlyReads` (`costly_reads`): every read is a request over a network with its own latency (Drive). A
  restore from such a backend fetches each pack it needs most of whole, once, into a temporary
  folder and reads its blobs from there (see capsule.adapters.repository.packcache); without it, a
  read is cheap and a restore reads just the ranges it needs.
- `TemporaryFiles` (`remove_temporary`): the backend writes under temporary names first; prune
  removes the ones a killed process left. A backend without it leaves none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from capsule.adapters.errors import RepositoryReadOnly
from capsule.domain.errors import UnsafePath

Kind = Literal["config", "keys", "data", "index", "snapshots", "locks", "damaged", "eventlog"]
KINDS: tuple[Kind, ...] = ("keys", "data", "index", "snapshots", "locks")
"""The kinds kept as a group of objects (`config` is one object)."""
# damaged: made by a repair; eventlog: the copies of the event log `capsule sync` leaves on a destination
ALL_KINDS: frozenset[str] = frozenset(("config", *KINDS, "damaged", "eventlog"))

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}")


def check_name(kind: str, name: str) -> None:
    """Refuse a kind or name that is not an object's: one that could reach outside the store."""
    if kind not in ALL_KINDS:
        raise UnsafePath(f"{kind!r} is not a kind of repository object")
    if _NAME.fullmatch(name) is None:
        raise UnsafePath(
            f"{name[:80]!r} is not the name of a repository object (lowercase letters, digits, - and _)"
        )


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    modified: float
    """When it was last written, in seconds since the epoch."""


class Backend(Protocol):
    """Stores a repository's objects; see the module's docstring for the contract."""

    def describe(self) -> str:
        """The repository's location, for messages: a folder, a Drive folder's name."""

    def create_layout(self) -> None:
        """Prepare an empty store for a new repository (folders, for a local one)."""

    def write(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        """Store `data` under (kind, name) atomically, replacing what was there."""

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes from `offset` (to the end when length is None)."""

    def read_tail(self, kind: Kind, name: str, length: int) -> tuple[int, bytes]:
        """Return (size, last `length` bytes)."""

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        """Return the stored size and the time of the last write."""

    def size(self, kind: Kind, name: str) -> int:
        """Return the stored size in bytes."""

    def exists(self, kind: Kind, name: str) -> bool:
        """Tell whether (kind, name) is stored."""

    def list(self, kind: Kind) -> Iterator[str]:
        """Yield the names stored under `kind`, in no particular order."""

    def remove(self, kind: Kind, name: str) -> None:
        """Delete (kind, name); deleting a missing object is not an error."""


@runtime_checkable
class LocalPaths(Protocol):
    """A capability: the backend's objects are files on this machine, which another process of it
    (a restore worker) may open by path. Nothing but such fast paths may use it."""

    def path_of(self, kind: Kind, name: str) -> Path:
        """The file holding (kind, name)."""

    def open_file(self, kind: Kind, name: str) -> AbstractContextManager[OpenObject]:
        """The file holding (kind, name), opened once for several reads (ObjectNotFound if it is
        not there)."""


class OpenObject(Protocol):
    """An object opened once, read in ranges (a repack reads a pack's header, then its runs)."""

    size: int

    def tail(self, length: int) -> bytes:
        """Its last `length` bytes (all of it if shorter)."""

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer at its end)."""


@runtime_checkable
class CostlyReads(Protocol):
    """A capability: each read is a request over a network (Drive), whose latency costs more than
    reading a few MB more: a restore fetches the packs it needs most of whole (see packcache)."""

    costly_reads: bool


def costly_reads(backend: Backend) -> bool:
    """Whether every read of `backend` is a round trip worth saving (see `CostlyReads`)."""
    return isinstance(backend, CostlyReads) and backend.costly_reads


@runtime_checkable
class TemporaryFiles(Protocol):
    """A capability: the backend writes objects under temporary names first (a local folder), and
    can remove those a killed process left behind."""

    def remove_temporary(self, older_than: float) -> int:
        """Remove temporary files last written before `older_than` (seconds since the epoch);
        return how many were removed."""


@runtime_checkable
class WritesParts(Protocol):
    """A capability: the backend stores an object given as pieces laid end to end without joining
    them first (a pack written from its runs of blobs: one pack's worth of memory less)."""

    def write_parts(self, kind: Kind, name: str, parts: Sequence[bytes | memoryview]) -> None:
        """`write` of the pieces end to end."""


def write_parts(backend: Backend, kind: Kind, name: str, parts: Sequence[bytes | memoryview]) -> None:
    """Store the pieces end to end as (kind, name): without joining them where the backend can."""
    if isinstance(backend, WritesParts):
        backend.write_parts(kind, name, parts)
    else:
        backend.write(kind, name, b"".join(parts))


def local_paths(backend: Backend) -> LocalPaths | None:
    """The backend as `LocalPaths` if it offers them, else None (use the plain contract)."""
    return backend if isinstance(backend, LocalPaths) else None


def not_writable(backend: Backend, error: RepositoryReadOnly, operation: str) -> RepositoryReadOnly:
    """The one sentence for `operation`, which must write, meeting a repository it cannot write."""
    if error.read_only_mount:
        what, fix = "is on a read-only file system", "mount it read-write"
    else:
        what, fix = "cannot be written by this user", "run Capsule as a user who may write there"
    return RepositoryReadOnly(
        f"the repository at {backend.describe()} {what} and {operation} writes to it: {fix}, then run "
        "the command again",
        error.read_only_mount,
    )
