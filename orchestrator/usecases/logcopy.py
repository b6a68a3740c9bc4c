"""An encrypted copy of the event log beside the repository on a destination, so that a new machine
gets back the audit history, the jobs and the settings with the data (`capsule recover`).

Each copy is one object of kind `eventlog`, a **generation**, named
`<UTC time written>-<position of the last event>-<first 32 hex digits of its chain>`
(`20261206t171500z-000000001234-5f0e…`): the whole log exported (`eventstore/logexport.py`),
compressed with zstd and sealed with the repository key under the AAD `capsule:eventlog:<name>`,
so a copy cannot be read without the key, nor altered, nor passed off under another generation's
name. docs/repository-format.md, "The copy of the event log", gives the layout.

Safe to run twice, and cheap when nothing happened: a generation is written only when no copy on the
destination already names the log's last position and chain; then all but the two newest
generations Capsule wrote are removed (a name of another shape is never touched). A run that dies
leaves the older generations in place: an object is written whole or not at all.

`copy_event_log` is the call for anything that has just copied the repository to a destination
(`capsule sync` at its end, an upload step); `newest_log_copy` reads the newest copy that opens and
holds together, for `capsule recover`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.adapters.repository.backends import Backend
    from capsule.adapters.repository.repo import Repository
    from capsule.orchestrator.eventstore.logexport import Parsed
    from capsule.orchestrator.usecases.sync import Synced

KIND: Final = "eventlog"
KEEP = 2
"""Generations kept on each destination: the newest, and one before it should the newest be damaged."""
LEVEL = 3
"""zstd level: JSON lines compress well and fast at it (docs/performance.md, "The event log's copy
on a destination")."""
AFTER_UPLOAD_EVERY = timedelta(hours=6)
"""How old the newest copy on a destination may be before a backup's upload step writes another:
a copy seals the whole log, too much for every hourly backup; `capsule sync` always writes one."""
AAD_PREFIX = b"capsule:eventlog:"
GENERATION = re.compile(r"(?P<time>\d{8}t\d{6}z)-(?P<position>\d{12})-(?P<head>[0-9a-f]{32})")


class NoLogCopy(CapsuleError):
    """Raised when a destination holds no copy of the event log that opens and holds together."""

    category = Category.NOT_FOUND


@dataclass(frozen=True)
class LogCopied:
    """The generation that holds the log now, whether this call wrote it, and what it removed."""

    name: str | None
    """None while the log holds no event: there is nothing to copy."""
    written: bool
    events: int
    """Events in the generation written; 0 when none was."""
    stored_bytes: int
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class FoundLogCopy:
    """The newest generation that opened and held together, and the newer ones that did not (why)."""

    name: str
    parsed: Parsed
    refused: tuple[tuple[str, str], ...] = ()


def generation_name(written_at: datetime, position: int, head: str) -> str:
    return f"{written_at.astimezone(UTC):%Y%m%dt%H%M%Sz}-{position:012d}-{head[:32]}"


def generations(backend: Backend) -> list[str]:
    """The generations Capsule wrote on `backend`, newest first."""
    return sorted((n for n in backend.list(KIND) if GENERATION.fullmatch(n)), reverse=True)


def copy_event_log(
    settings: Settings,
    destination: Backend,
    repo: Repository | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
) -> LogCopied:
    """Put a copy of the event log on `destination` unless it holds one of the log as it is now;
    keep the two newest generations. `repo` (the local repository, opened) lends its key."""
    import zstandard  # noqa: PLC0415

    from capsule.orchestrator.db import default_event_store_url, make_engine  # noqa: PLC0415
    from capsule.orchestrator.eventstore.chain import ChainKeyFile  # noqa: PLC0415
    from capsule.orchestrator.eventstore.logexport import export_log, log_head  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415

    engine = make_engine(settings.event_store_url or default_event_store_url(settings.home))
    try:
        present = generations(destination)
        position, head = log_head(engine)
        if position == 0:
            return LogCopied(None, False, 0, 0)
        same = f"-{position:012d}-{head[:32]}"
        kept = [n for n in present if n.endswith(same)]
        if kept:  # the log has not moved since that copy: nothing is read or sent
            return LogCopied(kept[0], False, 0, 0, _trim(destination, present, kept[0]))
        export = export_log(engine, ChainKeyFile(settings.resolved_event_log_key_file).key())
    finally:
        engine.dispose()
    repo = repo if repo is not None else open_repository(settings)
    now = (clock or _now)()
    name = generation_name(now, export.head_position, export.head)
    body = b"\x01" + zstandard.ZstdCompressor(level=LEVEL).compress(export.to_bytes(repo.id, now))
    stored = repo.sealer.seal(body, AAD_PREFIX + name.encode())
    destination.write(KIND, name, stored)
    return LogCopied(name, True, len(export.rows), len(stored), _trim(destination, [name, *present], name))


def copy_log_after_upload(
    settings: Settings, name: str, now: datetime, every: timedelta = AFTER_UPLOAD_EVERY
) -> LogCopied | None:
    """After a backup's upload to destination `name`: a copy of the event log there, unless its
    newest copy was written less than `every` before `now` (then None)."""
    from capsule.orchestrator.destinations import open_destination  # noqa: PLC0415

    backend = open_destination(settings, name)
    present = generations(backend)
    if present:
        written = datetime.strptime(GENERATION.fullmatch(present[0])["time"], "%Y%m%dt%H%M%Sz")  # type: ignore[index]
        if now - written.replace(tzinfo=UTC) < every:
            return None
    return copy_event_log(settings, backend, clock=lambda: now)


def copy_log_after_sync(
    settings: Settings, done: Synced, backends: Mapping[str, Backend] | None = None
) -> Synced:
    """`done` with a copy of the event log put on each destination that got its repository copy; a
    destination whose log copy fails is reported failed, with why. `backends`: the destinations'
    backends the sync opened already (with the listing it took), by name; others are opened."""
    import dataclasses  # noqa: PLC0415

    from capsule.orchestrator.destinations import open_destination  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415
    from capsule.orchestrator.usecases.sync import Synced  # noqa: PLC0415

    if not any(d.ok for d in done.destinations):
        return done
    results = []
    repo: Repository | None = None
    for d in done.destinations:
        if not d.ok:
            results.append(d)
            continue
        try:
            repo = repo if repo is not None else open_repository(settings)
            backend = (backends or {}).get(d.name) or open_destination(settings, d.name)
            copied = copy_event_log(settings, backend, repo)
        except CapsuleError as e:
            message = f"the repository was copied, but not the event log: {e}"
            results.append(dataclasses.replace(d, ok=False, error=message, category=e.category))
            continue
        results.append(dataclasses.replace(d, event_log=copied.name, event_log_written=copied.written))
    return Synced(results)


def _trim(backend: Backend, present: list[str], newest: str) -> tuple[str, ...]:
    """Remove all but the KEEP newest generations; `newest` is always kept (a clock set back)."""
    ordered = [newest, *(n for n in sorted(set(present), reverse=True) if n != newest)]
    old = ordered[KEEP:]
    for name in old:
        backend.remove(KIND, name)
    return tuple(old)


def open_log_copy(repo: Repository, backend: Backend, name: str) -> Parsed:
    """Generation `name` of `backend`, opened with the repository key and checked against its chain."""
    import zstandard  # noqa: PLC0415

    from capsule.adapters.errors import IntegrityError  # noqa: PLC0415
    from capsule.orchestrator.eventstore.logexport import LogCopyInvalid, parse  # noqa: PLC0415

    what = f"the event log copy {name} on {backend.describe()}"
    body = repo.sealer.open(backend.read(KIND, name), AAD_PREFIX + name.encode(), what)
    if body[:1] != b"\x01":
        raise IntegrityError(f"{what} has an unknown encoding")
    try:
        document = zstandard.ZstdDecompressor().decompress(body[1:])
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what} does not decompress: {e}") from e
    try:
        parsed = parse(document)
    except LogCopyInvalid as e:
        raise IntegrityError(f"{what} does not hold together: {e}") from e
    if parsed.repository != repo.id:
        raise IntegrityError(f"{what} is the log of another repository ({parsed.repository[:8]})")
    match = GENERATION.fullmatch(name)
    if match is None or (int(match["position"]), match["head"]) != (
        parsed.export.head_position,
        parsed.export.head[:32],
    ):
        raise IntegrityError(f"{what} does not hold the log its name says")
    return parsed


def newest_log_copy(repo: Repository, backend: Backend) -> FoundLogCopy:
    """The newest generation on `backend` that opens and holds together; the newer ones refused,
    each with why. `NoLogCopy` when none does."""
    refused: list[tuple[str, str]] = []
    names = generations(backend)
    for name in names:
        try:
            return FoundLogCopy(name, open_log_copy(repo, backend, name), tuple(refused))
        except CapsuleError as e:
            refused.append((name, str(e)))
    if not names:
        raise NoLogCopy(
            f"{backend.describe()} holds no copy of the event log (a Capsule before it kept one, or no "
            "`capsule sync` has run since): only the data can be read from it, with `--from` on "
            "snapshots, restore and verify"
        )
    raise NoLogCopy(
        f"no copy of the event log on {backend.describe()} can be used: "
        + "; ".join(reason for _, reason in refused)
    )


def _now() -> datetime:
    return datetime.now(UTC)
