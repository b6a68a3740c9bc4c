"""Where a destination becomes a storage `Backend`: the one place that opens its secrets.

The destinations are read from the `settings` stream (`domain/destinations.py` folds them), so a
command sees every change up to the moment it runs. `open_destination` gives the backend of one:

- `folder`: a `LocalBackend` at its path. The folder must exist: on a NAS share or a USB disk it is
  a folder inside the mount point, so when the share or disk is not mounted it is not there, and
  Capsule says so instead of filling the machine's own disk under an empty mount point. The
  repository's layout is created in it when missing.
- `gdrive`: the Drive backend, given the client secret and refresh token opened from their seals,
  at the root URL `CAPSULE_GDRIVE_ROOT_URL` names (a proxy), else Google's. An authorization Drive
  refuses raises `DestinationNeedsConsent` naming this destination's own renew command.
  Its module is imported when a Drive destination is opened: a Capsule without it says so.

Nothing here logs, and no error names a secret: the plaintexts go only into the credentials.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsule.domain.destinations import Destination, Destinations, replay, secret_purpose
from capsule.domain.errors import CapsuleError, Category

if TYPE_CHECKING:
    from capsule.adapters.repository.backends import Backend
    from capsule.orchestrator.eventstore import StoredEvent
    from capsule.orchestrator.reads import Event as ReadEvent
    from capsule.orchestrator.runtime import Runtime
    from capsule.orchestrator.settings import Settings

DRIVE_MODULE = "capsule.adapters.repository.backends.gdrive"
QUICK_ATTEMPTS = 3


class DestinationUnavailable(CapsuleError):
    """Raised when a destination cannot be opened now: a folder missing or read-only, no backend."""

    category = Category.UNAVAILABLE


def settings_events(runtime: Runtime) -> list[StoredEvent]:
    """Every event of the settings stream, in order."""
    from capsule.orchestrator import codec  # noqa: PLC0415

    return runtime.store.read_stream(codec.SETTINGS_STREAM)


def destinations_of(stored: Sequence[StoredEvent] | Sequence[ReadEvent]) -> Destinations:
    """The destinations after the settings stream's events `stored`: rows of the event store, or
    the events `capsule status` reads without it (already upcast, so without a schema version)."""
    from capsule.domain.events import load_event  # noqa: PLC0415

    return replay(
        load_event(row.type, row.data, schema_version=getattr(row, "schema_version", None)) for row in stored
    )


def load(settings: Settings) -> Destinations:
    """The destinations as the event log holds them now."""
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        return destinations_of(settings_events(runtime))
    finally:
        runtime.close()


def open_destination(settings: Settings, name: str) -> Backend:
    """The backend of destination `name`; UnknownDestination lists the names, DestinationUnavailable
    says what to check."""
    return open_backend_of(settings, load(settings).get(name))


def open_backend_of(
    settings: Settings, destination: Destination, *, quick: bool = False, sessions: Any = None
) -> Backend:
    """The backend of `destination`, read from the settings already. `quick`: a person waits for
    the answer (a probe), so a Drive request is tried 3 times within seconds, not for minutes.
    `sessions` keeps a Drive upload's session across a restart (an `UploadSessions`); uploads to
    Drive keep under the destination's bandwidth limit."""
    if destination.kind == "folder":
        return _open_folder(Path(destination.path or ""))
    return _open_drive(settings, destination, quick, sessions)


def folder_problem(path: Path) -> str | None:
    """Why a folder destination's folder cannot be used as it is now (missing, not a folder, not
    reachable), with what to check; None when it is a folder."""
    try:
        if path.is_dir():
            return None
        what = "is not a folder" if path.exists() else "does not exist"
    except OSError as e:
        return (
            f"the destination folder {path} cannot be reached ({e.strerror}): check that the share or disk "
            "holding it is mounted and readable by this user"
        )
    return (
        f"the destination folder {path} {what}: if it is on a NAS share or a USB disk, check that it is "
        f"mounted (`findmnt --target {path.parent}`); else create the folder (`mkdir -p {path}`)"
    )


def _open_folder(path: Path) -> Backend:
    from capsule.adapters.errors import RepositoryError  # noqa: PLC0415
    from capsule.adapters.repository.backends import KINDS, open_backend  # noqa: PLC0415

    problem = folder_problem(path)
    if problem is not None:
        raise DestinationUnavailable(problem)
    backend = open_backend(path)
    if all((path / kind).is_dir() for kind in KINDS):
        return backend
    if not os.access(path, os.W_OK | os.X_OK):
        raise DestinationUnavailable(
            f"the destination folder {path} cannot be written by this user: check that the share is mounted "
            "read-write and that this user may write there"
        )
    try:
        backend.create_layout()
    except RepositoryError as e:
        raise DestinationUnavailable(
            f"the repository's folders cannot be created in {path} ({e}): check that the share or disk is "
            "mounted read-write, writable by this user and not full"
        ) from e
    return backend


def open_secrets(settings: Settings, destination: Destination) -> tuple[str, str]:
    """(client secret, refresh token) of a Drive destination, opened from their seals: for the
    backend only, never to be printed or logged."""
    from capsule.orchestrator.secrets import SecretUnavailable, box_in  # noqa: PLC0415

    if destination.client_secret is None or destination.refresh_token is None:
        raise SecretUnavailable(
            f"the destination {destination.name} has no sealed consent; add it again with "
            "`capsule destinations add gdrive`"
        )
    box = box_in(settings.home)
    name = destination.name
    return (
        box.open(secret_purpose(name, "client_secret"), destination.client_secret),
        box.open(secret_purpose(name, "refresh_token"), destination.refresh_token),
    )


def _open_drive(
    settings: Settings, destination: Destination, quick: bool = False, sessions: Any = None
) -> Backend:
    try:
        drive: Any = importlib.import_module(DRIVE_MODULE)
    except ImportError as e:
        raise DestinationUnavailable(
            f"this Capsule cannot reach Google Drive yet (its Drive backend is missing), so the destination "
            f"{destination.name} cannot be opened; upgrade Capsule, or use a folder destination meanwhile"
        ) from e
    client_secret, refresh_token = open_secrets(settings, destination)
    credentials = drive.DriveCredentials(
        client_id=destination.client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        token_uri=destination.token_uri,
    )
    backend: Backend = drive.open_drive(
        destination.folder_name or destination.name,
        credentials,
        consent_hint=renew_command(destination.name),
        sessions=sessions,
        bandwidth_limit=destination.bandwidth,
        chunk_size=settings.gdrive_chunk_bytes,
        backoff=(
            drive.Backoff(attempts=QUICK_ATTEMPTS, base=0.5, cap=2.0)
            if quick
            else drive.Backoff(attempts=settings.gdrive_attempts)
        ),
    )
    return backend


def renew_command(name: str) -> str:
    """The command that gives Drive destination `name` consent again."""
    return f"capsule destinations renew {name}"
