"""Destinations: the off-site copies of the repository (a folder on a NAS or a USB disk, a Google
Drive folder), each a complete repository by itself.

They are part of the settings aggregate: adding, removing, renewing a Drive consent, turning one
off and on are events of the `settings` stream (`DestinationAdded`, `DestinationRemoved`,
`DestinationConsentRenewed`, `DestinationDisabled`, `DestinationEnabled`), each with its actor in
its metadata. `DestinationConsentNeeded` is recorded when a Drive destination refuses Capsule's
authorization; the destination then needs consent again until a renewal clears it.

This module is the decider: `decide(state, command)` checks a command against the destinations so
far and returns the events it makes; `evolve` folds an event in; the state is always
`replay(events)`.

Secrets arrive here already sealed (`orchestrator/secrets.py`): the domain never sees a refresh
token or a client secret in plain text, and the events refuse one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from capsule.domain.errors import CapsuleError, Category
from capsule.domain.events import (
    DestinationAdded,
    DestinationBandwidthLimited,
    DestinationConsentNeeded,
    DestinationConsentRenewed,
    DestinationDisabled,
    DestinationEnabled,
    DestinationPaused,
    DestinationRemoved,
    DestinationResumed,
    Event,
)
from capsule.domain.settings import SEALED_PREFIX

STREAM_PREFIX = "destination-"
"""The streams of what each destination holds and its upload sessions: `destination-<added_id>`."""

DestinationKind = Literal["folder", "gdrive"]
KINDS: tuple[DestinationKind, ...] = ("folder", "gdrive")
NAME_RULE = "lowercase letters, digits and `-`, at most 32, starting with a letter or a digit"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_TOKEN_URI = re.compile(r"https://[^\s/]+(/\S*)?|http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/\S*)?")
"""https, or plain http to this machine's loopback (a local proxy, a test server): nothing leaves
the machine unencrypted."""
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (an address, not a secret)


class InvalidDestination(CapsuleError):
    """Raised when a destination's name, path or Drive configuration cannot be taken as given."""

    category = Category.INVALID_SETTING


class DestinationExists(CapsuleError):
    """Raised when a destination is added under a name another destination has."""

    category = Category.REFUSED


class UnknownDestination(CapsuleError):
    """Raised when a command names a destination that does not exist; the message lists those that do."""

    category = Category.NOT_FOUND


class Destination(BaseModel):
    """One destination as the settings hold it: public configuration, secrets sealed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: DestinationKind
    enabled: bool = True
    path: str | None = None
    folder_name: str | None = None
    client_id: str | None = None
    token_uri: str | None = None
    client_secret: str | None = None
    """Sealed for `destinations.<name>.client_secret`."""
    refresh_token: str | None = None
    """Sealed for `destinations.<name>.refresh_token`."""
    needs_consent: str | None = None
    """Why Drive refused the authorization, while no renewed consent has come since; else None."""
    added_id: str = ""
    """The change that added it: names the stream of what it holds (`destination-<added_id>`)."""
    paused_until: datetime | None = None
    """Uploads wait until then: it kept refusing them for its rate limit (Drive's daily cap)."""
    pause_reason: str | None = None
    bandwidth: int | None = None
    """Bytes a second uploads to it may use; None: as fast as the line goes."""

    @property
    def stream_id(self) -> str:
        """The stream of what it holds: its own since it was added (`destination-<added_id>`)."""
        return f"{STREAM_PREFIX}{self.added_id}"

    def paused_at(self, now: datetime) -> bool:
        """Whether uploads to it wait at `now`."""
        return self.paused_until is not None and self.paused_until > now

    def describe(self) -> str:
        """Where its copy is, for people: the folder, or the Drive folder's name."""
        return (self.path or "") if self.kind == "folder" else f"Google Drive folder {self.folder_name}"


def secret_purpose(name: str, secret: Literal["client_secret", "refresh_token"]) -> str:
    """What a destination's secret is sealed for: a sealed value cannot be opened for another."""
    return f"destinations.{name}.{secret}"


@dataclass(frozen=True)
class Destinations:
    """Every destination, by name, in the order they were added."""

    by_name: dict[str, Destination] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def get(self, name: str) -> Destination:
        """The destination `name`; UnknownDestination lists the names there are."""
        found = self.by_name.get(name)
        if found is None:
            raise UnknownDestination(_unknown(name, self.names))
        return found


# Commands: the secrets in them are sealed already; `change_id` becomes the events' `job_id`.


@dataclass(frozen=True)
class AddFolder:
    change_id: str
    name: str
    path: str
    """Absolute, with links resolved by whoever gives it (the use case)."""
    forbidden: tuple[tuple[str, str], ...] = ()
    """(what, absolute path) of the folders a destination may neither be in nor hold: the local
    repository, Capsule's home."""


@dataclass(frozen=True)
class AddDrive:
    change_id: str
    name: str
    folder_name: str
    client_id: str
    token_uri: str
    client_secret: str
    refresh_token: str


@dataclass(frozen=True)
class Remove:
    change_id: str
    name: str


@dataclass(frozen=True)
class RenewConsent:
    change_id: str
    name: str
    refresh_token: str


@dataclass(frozen=True)
class SetEnabled:
    change_id: str
    name: str
    enabled: bool


@dataclass(frozen=True)
class MarkConsentNeeded:
    change_id: str
    name: str
    reason: str
    """What was seen, in words, with no secret."""


@dataclass(frozen=True)
class MarkPaused:
    change_id: str
    name: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class Resume:
    change_id: str
    name: str
    now: datetime


@dataclass(frozen=True)
class SetBandwidth:
    change_id: str
    name: str
    bytes_per_second: int | None


MIN_BANDWIDTH = 64 * 1024
"""Below this, a pack of the default size takes minutes per chunk and Drive's upload sessions risk
expiring."""

Command = (
    AddFolder
    | AddDrive
    | Remove
    | RenewConsent
    | SetEnabled
    | MarkConsentNeeded
    | MarkPaused
    | Resume
    | SetBandwidth
)


def check_name(name: str) -> None:
    """InvalidDestination when `name` cannot name a destination."""
    if not _NAME.fullmatch(name):
        raise InvalidDestination(
            f"`{name[:40]}` cannot name a destination: use {NAME_RULE} (for example `nas`)"
        )


def decide(state: Destinations, command: Command) -> list[Event]:
    """The events `command` makes against `state`, or the error that says why it is refused."""
    if isinstance(command, AddFolder | AddDrive):
        check_name(command.name)
        if command.name in state.by_name:
            raise DestinationExists(
                f"there is a destination named `{command.name}` already; choose another name, or remove "
                f"it first with `capsule destinations remove {command.name}`"
            )
        if isinstance(command, AddFolder):
            path = _check_folder(command)
            return [DestinationAdded(job_id=command.change_id, name=command.name, kind="folder", path=path)]
        _check_drive(command)
        return [
            DestinationAdded(
                job_id=command.change_id,
                name=command.name,
                kind="gdrive",
                folder_name=command.folder_name.strip(),
                client_id=command.client_id.strip(),
                token_uri=command.token_uri.strip(),
                client_secret=command.client_secret,
                refresh_token=command.refresh_token,
            )
        ]
    if isinstance(command, MarkConsentNeeded):
        # Seen by a copy or a probe, not asked for by an admin: a destination removed meanwhile, or
        # marked already, needs nothing more.
        found = state.by_name.get(command.name)
        if found is None or found.kind != "gdrive" or found.needs_consent is not None:
            return []
        return [DestinationConsentNeeded(job_id=command.change_id, name=command.name, reason=command.reason)]
    if isinstance(command, MarkPaused):
        # Seen by an upload: a destination removed meanwhile needs nothing.
        if command.name not in state.by_name:
            return []
        return [
            DestinationPaused(
                job_id=command.change_id, name=command.name, until=command.until, reason=command.reason
            )
        ]
    current = state.get(command.name)
    if isinstance(command, SetBandwidth):
        return _bandwidth(current, command)
    if isinstance(command, Resume):
        if not current.paused_at(command.now):
            return []
        return [DestinationResumed(job_id=command.change_id, name=command.name)]
    if isinstance(command, Remove):
        return [DestinationRemoved(job_id=command.change_id, name=command.name)]
    if isinstance(command, RenewConsent):
        if current.kind != "gdrive":
            raise InvalidDestination(
                f"`{command.name}` is a {current.kind} destination: only a Google Drive destination has a "
                "consent to renew"
            )
        _check_sealed("the refresh token", command.refresh_token)
        return [
            DestinationConsentRenewed(
                job_id=command.change_id, name=command.name, refresh_token=command.refresh_token
            )
        ]
    if current.enabled == command.enabled:
        return []
    made = DestinationEnabled if command.enabled else DestinationDisabled
    return [made(job_id=command.change_id, name=command.name)]


def _bandwidth(current: Destination, command: SetBandwidth) -> list[Event]:
    limit = command.bytes_per_second
    if limit is not None and current.kind != "gdrive":
        raise InvalidDestination(
            f"`{command.name}` is a folder destination, written at the disk's speed: a bandwidth limit "
            "applies to Google Drive destinations"
        )
    if limit is not None and limit < MIN_BANDWIDTH:
        raise InvalidDestination(
            f"a bandwidth limit of {limit} bytes a second is too low: give at least 64KiB/s "
            "(for example 2MiB/s), or `off` for none"
        )
    if limit == current.bandwidth:
        return []
    return [DestinationBandwidthLimited(job_id=command.change_id, name=command.name, bytes_per_second=limit)]


def evolve(state: Destinations, event: Event) -> Destinations:
    """The destinations once `event` happened; other events of the settings stream change nothing."""
    by_name = dict(state.by_name)
    if isinstance(event, DestinationAdded):
        by_name[event.name] = Destination(
            name=event.name,
            kind=event.kind,
            path=event.path,
            folder_name=event.folder_name,
            client_id=event.client_id,
            token_uri=event.token_uri,
            client_secret=event.client_secret,
            refresh_token=event.refresh_token,
            added_id=event.job_id,
        )
    elif isinstance(event, DestinationRemoved):
        by_name.pop(event.name, None)
    elif isinstance(event, DestinationConsentRenewed) and event.name in by_name:
        renewed = {"refresh_token": event.refresh_token, "needs_consent": None}
        by_name[event.name] = by_name[event.name].model_copy(update=renewed)
    elif isinstance(event, DestinationConsentNeeded) and event.name in by_name:
        by_name[event.name] = by_name[event.name].model_copy(update={"needs_consent": event.reason})
    elif isinstance(event, DestinationPaused) and event.name in by_name:
        paused = {"paused_until": event.until, "pause_reason": event.reason}
        by_name[event.name] = by_name[event.name].model_copy(update=paused)
    elif isinstance(event, DestinationResumed) and event.name in by_name:
        resumed = {"paused_until": None, "pause_reason": None}
        by_name[event.name] = by_name[event.name].model_copy(update=resumed)
    elif isinstance(event, DestinationBandwidthLimited) and event.name in by_name:
        limit = {"bandwidth": event.bytes_per_second}
        by_name[event.name] = by_name[event.name].model_copy(update=limit)
    elif isinstance(event, DestinationEnabled | DestinationDisabled) and event.name in by_name:
        enabled = isinstance(event, DestinationEnabled)
        by_name[event.name] = by_name[event.name].model_copy(update={"enabled": enabled})
    else:
        return state
    return Destinations(by_name)


def replay(events: Iterable[Event]) -> Destinations:
    """The destinations after `events`, from none."""
    state = Destinations()
    for event in events:
        state = evolve(state, event)
    return state


def _check_folder(command: AddFolder) -> str:
    raw = command.path
    path = PurePosixPath(raw)
    if not path.is_absolute():
        raise InvalidDestination(
            f"a folder destination's path must be absolute (from `/`), not `{raw}`: for example "
            "/mnt/nas/capsule or /media/usb-backup/capsule"
        )
    if ".." in path.parts:
        raise InvalidDestination(f"`{raw}` goes up with `..`: give the folder's path without it")
    if path == PurePosixPath("/"):
        raise InvalidDestination(
            "a folder destination cannot be `/`: give a folder of its own on the disk or share"
        )
    for what, other in command.forbidden:
        place = PurePosixPath(other)
        if path == place or path.is_relative_to(place):
            raise InvalidDestination(
                f"{raw} is inside {what} ({other}): an off-site copy must be on another disk or share, "
                "for example /mnt/nas/capsule"
            )
        if place.is_relative_to(path):
            raise InvalidDestination(
                f"{raw} holds {what} ({other}): give a folder of its own on another disk or share, "
                "for example /mnt/nas/capsule"
            )
    return str(path)


def _check_drive(command: AddDrive) -> None:
    if not command.folder_name.strip() or "/" in command.folder_name:
        raise InvalidDestination(
            f"`{command.folder_name}` cannot name a Drive folder: "
            "give a name without `/`, such as capsule-shop"
        )
    if not command.client_id.strip():
        raise InvalidDestination(
            "the client secrets file gives no client_id: download it again from the Google Cloud console"
        )
    if not _TOKEN_URI.fullmatch(command.token_uri.strip()):
        raise InvalidDestination(
            f"the token address `{command.token_uri}` is not an https:// address (plain http:// only "
            "on this machine's loopback, 127.0.0.1 or localhost): check the client secrets file"
        )
    _check_sealed("the client secret", command.client_secret)
    _check_sealed("the refresh token", command.refresh_token)


def _check_sealed(what: str, value: str) -> None:
    # A programming error, not a user's: the use case seals before it decides.
    if not value.startswith(SEALED_PREFIX):
        raise InvalidDestination(f"{what} must be sealed before it is recorded")


def _unknown(name: str, names: list[str]) -> str:
    if not names:
        return (
            f"there is no destination named `{name}`: none is set up; add one with "
            "`capsule destinations add folder NAME PATH`"
        )
    return f"there is no destination named `{name}`; the destinations: {', '.join(names)}"
