"""Where repository files live: the storage contract and the backends that keep it.

- `storage.py`: the contract every backend keeps (`Backend`), its errors and names, and the one
  optional capability (`LocalPaths`).
- `local.py`: `LocalBackend`, a folder on a local disk; every file is written atomically.
- `memory.py`: `MemoryBackend`, the same contract in memory, for tests.
- `gdrive.py`: `DriveBackend`, a folder in Google Drive (an off-site copy), with Google's own
  client. Imported only where a Drive destination is opened: Google's libraries are heavy.
- `gdrive_auth.py`: Drive credentials, and consent on a server without a browser.
- `gdrive_retry.py`: backoff, and Drive's errors as Capsule's.
- `gdrive_upload.py`: resumable uploads, resumed after a restart, and pacing.

`open_backend` is the one place a repository location becomes a backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.backends.storage import (
    KINDS,
    Backend,
    Kind,
    LocalPaths,
    ObjectInfo,
    check_name,
    local_paths,
    not_writable,
)

__all__ = [
    "KINDS",
    "Backend",
    "Kind",
    "LocalPaths",
    "ObjectInfo",
    "check_name",
    "local_paths",
    "not_writable",
    "open_backend",
]


def open_backend(location: Path) -> Backend:
    """The backend for a repository location. Today every location is a local folder; Drive and
    other destinations will be told apart here."""
    return LocalBackend(location)


if TYPE_CHECKING:  # mypy holds every backend to the contract's signatures here
    from capsule.adapters.repository.backends.memory import MemoryBackend

    _local: Backend = LocalBackend(Path())
    _memory: Backend = MemoryBackend()
