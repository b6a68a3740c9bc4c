"""Use cases of the destinations, the off-site copies: add a folder or a Google Drive folder, renew
a Drive consent, turn one off and on, remove one, list them, and try one with a probe object.

A destination is part of the settings aggregate (`domain/destinations.py`): each change is decided
against the destinations read from the `settings` stream and appended at the version read, with
its actor; a change that meets another made meanwhile is decided again on the new state. A Drive
destination's client secret and refresh token are sealed (`orchestrator/secrets.py`, bound to
`destinations.<name>.client_secret` and `.refresh_token`) before the decider sees them, so no event,
projection, log line or result holds them in plain text: a listing shows `********`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capsule.domain import destinations as rules
from capsule.domain.errors import CapsuleError, Category
from capsule.domain.settings import SECRET_SHOWN
from capsule.orchestrator import faults

if TYPE_CHECKING:
    from collections.abc import Callable

    from capsule.adapters.repository.backends import Backend
    from capsule.domain.events import Event
    from capsule.orchestrator.eventstore import StoredEvent
    from capsule.orchestrator.settings import Settings

TRIES = 8
"""Decisions made again when the settings moved between the read and the append."""
PROBE_BYTES = 64
PROBE_WRITTEN = "destinations:probe-written"
"""Fault point: the probe object is written, not yet removed."""


class UnreadableFile(CapsuleError):
    """Raised when a file given on the command line (client secrets, a refresh token) cannot be used."""

    category = Category.INVALID_INPUT


@dataclass(frozen=True)
class DestinationView:
    """One destination as it may be shown: public configuration, each secret `********` or None."""

    name: str
    kind: str
    enabled: bool
    location: str
    path: str | None
    folder_name: str | None
    client_id: str | None
    token_uri: str | None
    client_secret: str | None
    refresh_token: str | None
    added_at: datetime | None
    added_by: str | None
    changed_at: datetime | None
    changed_by: str | None
    needs_consent: str | None = None
    """Why Drive refused Capsule's authorization, until the consent is renewed; else None."""
    needs_credentials: str | None = None
    """Why this machine cannot open a Drive destination's sealed secrets (they were sealed on
    another machine, whose secrets key is not here: after `capsule recover`); else None."""
    paused_until: datetime | None = None
    """Uploads to it wait until then (it kept refusing them for its rate limit); else None."""
    pause_reason: str | None = None
    bandwidth: int | None = None
    """Bytes a second its uploads may use; None: no limit."""


@dataclass(frozen=True)
class DestinationList:
    destinations: list[DestinationView]
    version: int
    """The settings' version they were read at."""


Action = Literal[
    "added", "removed", "consent_renewed", "enabled", "disabled", "bandwidth_set", "resumed", "unchanged"
]


@dataclass(frozen=True)
class DestinationChanged:
    action: Action
    destination: DestinationView
    """As it is after the change (a removed one: as it was)."""
    version: int
    warning: str | None = None
    """What stands in the way of copying there now (a folder that is not there yet), with what to do."""


@dataclass(frozen=True)
class ProbeResult:
    """What trying a destination showed: ok, or the category of the error and its sentence."""

    name: str
    kind: str
    location: str
    ok: bool
    category: str | None
    message: str
    seconds: float


def _actor(actor: str | None) -> str:
    from capsule.orchestrator.runtime import person  # noqa: PLC0415

    return actor or person()


def _decide(
    settings: Settings, make: Callable[[str], rules.Command], actor: str | None
) -> tuple[list[Event], DestinationList]:
    """Decide the command `make()` builds against the destinations now and append its events;
    once more on the new state if the settings moved meanwhile. Returns the events and the list after."""
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.destinations import destinations_of, settings_events  # noqa: PLC0415
    from capsule.orchestrator.errors import ConcurrencyConflict  # noqa: PLC0415
    from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime, new_job_id  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        for attempt in range(TRIES):
            stored = settings_events(runtime)
            version = stored[-1].version if stored else 0
            change_id = new_job_id()
            events = rules.decide(destinations_of(stored), make(change_id))
            if events:
                try:
                    runtime.store.append(
                        codec.SETTINGS_STREAM,
                        version,
                        [codec.encode(e) for e in events],
                        Metadata(actor=_actor(actor), correlation_id=change_id),
                        handlers=[runtime.handler],
                    )
                except ConcurrencyConflict:
                    if attempt == TRIES - 1:
                        raise
                    continue
            return events, _listing(settings_events(runtime))
    finally:
        runtime.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _listing(stored: list[StoredEvent]) -> DestinationList:
    from capsule.orchestrator.destinations import destinations_of  # noqa: PLC0415

    state = destinations_of(stored)
    added: dict[str, tuple[datetime, str]] = {}
    changed: dict[str, tuple[datetime, str]] = {}
    for row in stored:
        if not row.type.startswith("Destination"):
            continue
        name = row.data.get("name", "")
        changed[name] = (row.recorded_at, row.metadata.actor)
        if row.type == "DestinationAdded":
            added[name] = changed[name]
    views = [_view(d, added.get(d.name), changed.get(d.name)) for d in state.by_name.values()]
    return DestinationList(views, stored[-1].version if stored else 0)


def _view(
    d: rules.Destination, added: tuple[datetime, str] | None, changed: tuple[datetime, str] | None
) -> DestinationView:
    return DestinationView(
        name=d.name,
        kind=d.kind,
        enabled=d.enabled,
        location=d.describe(),
        path=d.path,
        folder_name=d.folder_name,
        client_id=d.client_id,
        token_uri=d.token_uri,
        client_secret=SECRET_SHOWN if d.client_secret else None,
        refresh_token=SECRET_SHOWN if d.refresh_token else None,
        added_at=added[0] if added else None,
        added_by=added[1] if added else None,
        changed_at=changed[0] if changed else None,
        changed_by=changed[1] if changed else None,
        needs_consent=d.needs_consent,
        paused_until=d.paused_until,
        pause_reason=d.pause_reason,
        bandwidth=d.bandwidth,
    )


def _result(
    action: Action, name: str, listing: DestinationList, before: DestinationList | None = None
) -> DestinationChanged:
    source = before if before is not None else listing
    view = next(v for v in source.destinations if v.name == name)
    return DestinationChanged(action, view, listing.version)


def list_destinations(settings: Settings) -> DestinationList:
    """Every destination, secrets masked."""
    from capsule.orchestrator.destinations import settings_events  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        stored = settings_events(runtime)
    finally:
        runtime.close()
    listing = _listing(stored)
    unopened = credentials_missing(settings, stored)
    views = [
        dataclasses.replace(v, needs_credentials=unopened[v.name]) if v.name in unopened else v
        for v in listing.destinations
    ]
    return DestinationList(views, listing.version)


def credentials_missing(settings: Settings, stored: list[StoredEvent]) -> dict[str, str]:
    """The Drive destinations whose sealed secrets this machine cannot open, each with why."""
    from capsule.orchestrator.destinations import destinations_of, open_secrets  # noqa: PLC0415

    missing = {}
    for d in destinations_of(stored).by_name.values():
        if d.kind != "gdrive":
            continue
        try:
            open_secrets(settings, d)
        except CapsuleError:
            missing[d.name] = (
                "its client secret and refresh token were sealed with another secrets key (another "
                "machine's, before `capsule recover`) and cannot be opened here"
            )
    return missing


def add_folder(
    settings: Settings, name: str, path: str | Path, actor: str | None = None
) -> DestinationChanged:
    """Add a folder destination (a NAS share or a USB disk, mounted); its folder need not be there yet
    (a disk not plugged in): the result's warning then says what is missing."""
    from capsule.orchestrator.destinations import folder_problem  # noqa: PLC0415

    rules.check_name(name)
    text = str(path)
    # Links resolved, so that a link into the repository is seen for what it is.
    resolved = os.path.realpath(text) if os.path.isabs(text) and ".." not in Path(text).parts else text
    forbidden = (
        ("the local repository", os.path.realpath(settings.repository)),
        ("Capsule's home", os.path.realpath(settings.home)),
    )
    _, listing = _decide(settings, lambda cid: rules.AddFolder(cid, name, resolved, forbidden), actor)
    added = _result("added", name, listing)
    problem = folder_problem(Path(resolved)) if os.path.isabs(resolved) else None
    return dataclasses.replace(added, warning=problem)


def client_config(data: Any) -> dict[str, str]:
    """client_id, client_secret and token_uri of a client secrets document (Google's JSON, under
    `installed` or `web`); UnreadableFile names what is missing, never a value."""
    inner = data.get("installed") or data.get("web") if isinstance(data, dict) else None
    if not isinstance(inner, dict):
        raise UnreadableFile(
            "the client secrets file has neither an `installed` nor a `web` section: download the OAuth "
            "client's JSON again from the Google Cloud console (APIs & Services, Credentials)"
        )
    found = {k: inner.get(k) for k in ("client_id", "client_secret", "token_uri")}
    found["token_uri"] = found["token_uri"] or rules.DEFAULT_TOKEN_URI
    missing = [k for k, v in found.items() if not isinstance(v, str) or not v.strip()]
    if missing:
        raise UnreadableFile(
            f"the client secrets file has no {' or '.join(missing)}: download the OAuth client's JSON again"
        )
    return {k: str(v).strip() for k, v in found.items()}


def read_client_secrets(path: Path) -> dict[str, Any]:
    """The client secrets document in `path`, as Google's console downloads it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UnreadableFile(f"the client secrets file {path} cannot be read ({e.strerror})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableFile(
            f"the client secrets file {path} is not JSON: give the file the Google Cloud console downloads"
        ) from e
    if not isinstance(data, dict):
        raise UnreadableFile(f"the client secrets file {path} is not a JSON object")
    return data


def read_refresh_token(path: Path) -> str:
    """The refresh token in `path`: its one line."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise UnreadableFile(f"the refresh token file {path} cannot be read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise UnreadableFile(
            f"the refresh token file {path} is not text: it must hold the token, one line"
        ) from e
    if not token or len(token.split()) != 1:
        raise UnreadableFile(
            f"the refresh token file {path} must hold the token on one line, and nothing else"
        )
    return token


def add_gdrive(
    settings: Settings,
    name: str,
    client_config_data: dict[str, Any],
    refresh_token: str,
    actor: str | None = None,
    *,
    folder_name: str | None = None,
) -> DestinationChanged:
    """Add a Google Drive destination with a refresh token obtained elsewhere; both secrets are
    sealed before anything is recorded."""
    from capsule.orchestrator.secrets import box_in  # noqa: PLC0415

    rules.check_name(name)
    config = client_config(client_config_data)
    token = refresh_token.strip()
    if not token:
        raise UnreadableFile(
            "the refresh token is empty: give the token the consent on another machine printed"
        )
    box = box_in(settings.home)
    sealed_secret = box.seal(rules.secret_purpose(name, "client_secret"), config["client_secret"])
    sealed_token = box.seal(rules.secret_purpose(name, "refresh_token"), token)
    folder = folder_name if folder_name is not None else f"capsule-{name}"

    def command(cid: str) -> rules.AddDrive:
        return rules.AddDrive(
            cid, name, folder, config["client_id"], config["token_uri"], sealed_secret, sealed_token
        )

    _, listing = _decide(settings, command, actor)
    return _result("added", name, listing)


def renew_consent(
    settings: Settings, name: str, refresh_token: str, actor: str | None = None
) -> DestinationChanged:
    """Give Drive destination `name` a new refresh token (after its consent was revoked or expired)."""
    from capsule.orchestrator.secrets import box_in  # noqa: PLC0415

    token = refresh_token.strip()
    if not token:
        raise UnreadableFile(
            "the refresh token is empty: give the token the consent on another machine printed"
        )
    sealed = box_in(settings.home).seal(rules.secret_purpose(name, "refresh_token"), token)
    _, listing = _decide(settings, lambda cid: rules.RenewConsent(cid, name, sealed), actor)
    return _result("consent_renewed", name, listing)


def set_enabled(settings: Settings, name: str, enabled: bool, actor: str | None = None) -> DestinationChanged:
    """Turn destination `name` on or off; nothing is recorded when it is so already."""
    events, listing = _decide(settings, lambda cid: rules.SetEnabled(cid, name, enabled), actor)
    action: Action = ("enabled" if enabled else "disabled") if events else "unchanged"
    return _result(action, name, listing)


def remove(settings: Settings, name: str, actor: str | None = None) -> DestinationChanged:
    """Remove destination `name` from the settings; what it holds stays where it is."""
    before = list_destinations(settings)
    _, listing = _decide(settings, lambda cid: rules.Remove(cid, name), actor)
    return _result("removed", name, listing, before)


def probe_destination(settings: Settings, name: str) -> ProbeResult:
    """Open destination `name` and round-trip a probe object in its `locks`: write, list, read back,
    remove. An error is reported (its category and sentence), not raised, once the destination is
    known; an unknown name raises UnknownDestination."""
    from capsule.adapters.errors import DestinationNeedsConsent  # noqa: PLC0415
    from capsule.orchestrator.destinations import load, open_backend_of  # noqa: PLC0415

    destination = load(settings).get(name)
    started = time.monotonic()
    step = ""
    try:
        backend = open_backend_of(settings, destination, quick=True)
        step = "the probe failed: "
        message = _round_trip(backend)
    except DestinationNeedsConsent as e:
        record_consent_needed(settings, name, consent_reason(e))
        return _probe(destination, started, e.category.value, str(e))
    except CapsuleError as e:
        return _probe(destination, started, e.category.value, f"{step}{e}")
    except OSError as e:
        return _probe(destination, started, Category.UNAVAILABLE.value, f"{step}{e.strerror or e}")
    return _probe(destination, started, None, message)


REVOKED = "its authorization was revoked or has expired"
REFUSED = "Google Drive refused its authorization"


def consent_reason(error: Exception) -> str:
    """What a refused authorization is recorded as: words only, nothing of the token endpoint's answer."""
    return REVOKED if "revoked or expired" in str(error) else REFUSED


def record_consent_needed(settings: Settings, name: str, reason: str, actor: str | None = None) -> bool:
    """Mark Drive destination `name` as needing consent again (seen by a probe or a copy), once;
    True when this call recorded it. Local backups go on; `capsule status --check` reports it."""
    from capsule.orchestrator.runtime import SYSTEM  # noqa: PLC0415

    events, _ = _decide(settings, lambda cid: rules.MarkConsentNeeded(cid, name, reason), actor or SYSTEM)
    return bool(events)


def record_paused(
    settings: Settings, name: str, until: datetime, reason: str, actor: str | None = None
) -> bool:
    """Mark destination `name` as paused until `until` (it kept refusing uploads for its rate
    limit); True when this call recorded it. Backups requested meanwhile leave it out."""
    from capsule.orchestrator.runtime import SYSTEM  # noqa: PLC0415

    events, _ = _decide(settings, lambda cid: rules.MarkPaused(cid, name, until, reason), actor or SYSTEM)
    return bool(events)


def resume(settings: Settings, name: str, actor: str | None = None) -> DestinationChanged:
    """Let uploads to paused destination `name` go on now: the next backup includes it."""
    from datetime import UTC  # noqa: PLC0415

    now = datetime.now(UTC)
    events, listing = _decide(settings, lambda cid: rules.Resume(cid, name, now), actor)
    return _result("resumed" if events else "unchanged", name, listing)


def parse_bandwidth(rate: str) -> int | None:
    """Bytes a second from a rate with a unit of KiB/s or MiB/s, or `off` (None); InvalidDestination
    says how to write one."""
    from capsule.domain.sizes import parse_rate  # noqa: PLC0415

    try:
        return parse_rate(rate)
    except ValueError:
        raise rules.InvalidDestination(
            f"`{rate[:40]}` is not a bandwidth: give bytes a second such as 2MiB/s or 512KiB/s, or `off`"
        ) from None


def limit_bandwidth(settings: Settings, name: str, rate: str, actor: str | None = None) -> DestinationChanged:
    """Cap the bytes a second uploads to Drive destination `name` may use (`off`: no cap)."""
    limit = parse_bandwidth(rate)
    events, listing = _decide(settings, lambda cid: rules.SetBandwidth(cid, name, limit), actor)
    return _result("bandwidth_set" if events else "unchanged", name, listing)


def _probe(d: rules.Destination, started: float, category: str | None, message: str) -> ProbeResult:
    return ProbeResult(
        d.name, d.kind, d.describe(), category is None, category, message, time.monotonic() - started
    )


def _round_trip(backend: Backend) -> str:
    probe = f"probe-{secrets.token_hex(8)}"
    data = _probe_lock()
    backend.write("locks", probe, data)
    faults.point(PROBE_WRITTEN)
    try:
        if probe not in set(backend.list("locks")):
            raise ProbeMismatch("the probe object written was not listed")
        if backend.read("locks", probe) != data:
            raise ProbeMismatch("the probe object read back differs from what was written")
    finally:
        backend.remove("locks", probe)
    if probe in set(backend.list("locks")):
        raise ProbeMismatch("the probe object removed is still listed")
    return f"wrote, listed, read back and removed a probe object at {backend.describe()}"


def _probe_lock() -> bytes:
    """The probe object: a shared lock of this process, operation `probe`, with random bytes in it.
    It lies among the destination's locks, so one left by a killed probe reads as the lock of a
    process that is gone and is removed as stale, and a shared lock stands in no reader's way."""
    from capsule.adapters.repository.lock import lock_record, process_start_time  # noqa: PLC0415

    pid = os.getpid()
    record = json.loads(lock_record(pid, process_start_time(pid), False, "probe"))
    record["probe"] = secrets.token_hex(PROBE_BYTES)
    return json.dumps(record).encode()


class ProbeMismatch(CapsuleError):
    """Raised when a destination answers a probe with something else than was stored."""

    category = Category.DAMAGED
