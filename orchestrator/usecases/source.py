"""Where a command reads a repository from: the local one, or a copy named by `--from`.

`--from` takes a configured destination's name (`capsule destinations list`) or the path of a
folder holding a copy (`/mnt/usb/capsule`): on a new machine, whose event log names no destination,
a folder copy is reached by its path, and a Drive copy once `capsule destinations add gdrive` has
named it there. A name never holds a `/`, so anything with one, or starting with `.` or `~`, is a
path.

A copy is opened with the same key file (or passphrase) as the local repository: it is the same
repository. Its index is read from the copy itself, never from the local index cache, so that what
a command reports is what the copy holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from capsule.adapters.errors import RepositoryNotFound
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository

if TYPE_CHECKING:
    from capsule.adapters.repository.backends import Backend
    from capsule.adapters.repository.repo import Repository


def is_path(source: str) -> bool:
    """Whether `--from` names a folder rather than a destination."""
    return "/" in source or source.startswith((".", "~"))


def open_source_backend(settings: Settings, source: str) -> Backend:
    """The store of the copy `source` names: a folder holding a repository, or a destination."""
    # Only a destination's name needs these: its records are read from the event log, whose
    # events (every one a model) take longer to load than a local copy takes to open.
    from capsule.adapters.repository.backends import open_backend  # noqa: PLC0415
    from capsule.domain.destinations import UnknownDestination  # noqa: PLC0415
    from capsule.orchestrator.destinations import open_destination  # noqa: PLC0415

    if is_path(source):
        folder = Path(source).expanduser()
        if not (folder / "config").is_file():
            raise RepositoryNotFound(
                f"there is no repository in {folder}: give the folder that holds its `config`, `keys` and "
                "`data` (check that the disk or share holding it is mounted)"
            )
        return open_backend(folder)
    try:
        backend = open_destination(settings, source)
    except UnknownDestination as e:
        raise UnknownDestination(
            f"{e}; --from takes a destination's name or the path of a folder holding a copy "
            "(e.g. --from /mnt/usb/capsule)"
        ) from e
    if not backend.exists("config", "config"):
        raise RepositoryNotFound(
            f"the destination {source} holds no repository yet: `capsule sync {source}` copies one there"
        )
    return backend


def open_source(settings: Settings, source: str | None, passphrase: str | None = None) -> Repository:
    """The local repository when `source` is None, else the copy it names, opened with the key."""
    from capsule.adapters.repository.repo import Repository  # noqa: PLC0415

    if source is None:
        return open_repository(settings, passphrase)
    given = passphrase or (settings.passphrase.get_secret_value() if settings.passphrase else None)
    return Repository.open(open_source_backend(settings, source), settings.resolved_key_file, given)
