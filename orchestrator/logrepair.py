"""A damaged SQLite event log: set it aside, start a new one, and record what the repository holds.

The log is the record of what happened; the repository holds what was backed up. A damaged log
must neither stop a backup or a restore nor ever be lost. The repair moves it aside under a dated
name (with its -wal and -shm), byte for byte, and starts a new log whose first event,
`EventLogStarted`, says which file, why and (in its metadata) when and by whom; one
`SnapshotRecovered` event per snapshot of the repository follows, so that `status` and the
snapshot projection work again. The readable events of the old log are not copied: the new log
stands on its own, and the old one stays readable where it was set aside.

Safe to run twice: a log that reads whole is left alone. Safe to kill: the new log is built whole
under a temporary name first, the damaged file is hard-linked to its set-aside name, and the new
log takes the log's name in one atomic rename. Whenever the process dies, the log's name holds
either the damaged log (run the repair again) or the new one, and the damaged file has a name.

On PostgreSQL, damage is the database server's to repair; nothing here applies to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection

from capsule.domain.errors import CapsuleError
from capsule.domain.events import Event, EventLogStarted, SnapshotRecovered
from capsule.orchestrator import codec, faults
from capsule.orchestrator.db import (
    damaged,
    database_errors,
    default_event_store_url,
    disk_full,
    for_reading,
    make_engine,
    safe_url,
    sqlite_file,
)
from capsule.orchestrator.errors import EventLogDamaged, EventStoreError, EventStoreUnavailable
from capsule.orchestrator.eventstore import ChainKeyFile, EventStore, Metadata, create_schema
from capsule.orchestrator.projections import ProjectionHandler, create_projection_schema
from capsule.orchestrator.settings import Settings

SIDE_SUFFIXES = ("-wal", "-shm")
ASIDE_MARK = ".damaged-"
UNFINISHED_MARK = ".new-"
# SQLite's unix VFS: every connection to a WAL database holds a shared lock on this byte of the
# -shm file for as long as it is open.
SHM_DMS_OFFSET = 128
DEEP_CHECK_BATCH = 5000


@dataclass(frozen=True)
class LogRepair:
    """What a repair found and did; `reason` is None when the log was whole and left alone."""

    log: Path
    reason: str | None
    set_aside_as: tuple[Path, ...] = ()
    snapshots: int = 0
    problems: tuple[str, ...] = ()


def event_log_url(settings: Settings) -> str:
    return settings.event_store_url or default_event_store_url(settings.home)


def repair_log(settings: Settings, *, actor: str, clock: Callable[[], datetime] | None = None) -> LogRepair:
    """Check the SQLite event log through and through (every event read); if it is damaged, set it
    aside and start a new one. Refused on PostgreSQL."""
    url = event_log_url(settings)
    path = sqlite_file(url)
    if path is None:
        raise EventStoreError(
            f"the event store at {safe_url(url)} is not a SQLite file: damage there is its database "
            "server's to repair (see its log, and restore it from its own backup if need be)"
        )
    with _one_repair_at_a_time(path.parent):
        reason = damage_of(url, path, deep=True)
        if reason is None:
            return LogRepair(path, None)
        return _start_afresh(settings, path, reason, actor=actor, detected_by="repair-log", clock=clock)


def recover_if_damaged(
    settings: Settings, *, actor: str, detected_by: str, clock: Callable[[], datetime] | None = None
) -> LogRepair | None:
    """Before a backup or a restore: if the SQLite log fails SQLite's quick check, set it aside and
    start a new one, so that the job goes on; None when there was nothing to do."""
    url = event_log_url(settings)
    path = sqlite_file(url)
    if path is None:
        return None
    with _one_repair_at_a_time(path.parent):
        # Checked under the lock: a backup that waited for another one's repair finds the new log.
        reason = damage_of(url, path, deep=False)
        if reason is None:
            return None
        return _start_afresh(settings, path, reason, actor=actor, detected_by=detected_by, clock=clock)


@contextmanager
def _one_repair_at_a_time(folder: Path) -> Iterator[None]:
    """Two commands that found the log damaged at once must not both set it aside; the lock is the
    folder's own (flock), so that no file is left behind for it."""
    if not folder.is_dir():
        yield  # no folder, no log: nothing to repair
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def damage_of(url: str, path: Path, *, deep: bool) -> str | None:
    """Why the SQLite log at `path` is damaged, in SQLite's words; None when it reads whole.

    SQLite's quick check reads every page (see docs/performance.md, "The event log's check before
    each backup and restore"). `deep` also reads every event's data, whose damage that check cannot
    see.
    """
    if not path.exists():
        return None
    engine = make_engine(url)
    try:
        with database_errors(engine), for_reading(engine).connect() as conn:
            found = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check(5)")]
            if found != ["ok"]:
                lines = [line for row in found for line in row.splitlines() if not line.startswith("***")]
                return "SQLite's check found: " + "; ".join(lines)
            if deep:
                _read_every_event(conn, path)
    except EventLogDamaged as e:
        return e.reason
    finally:
        engine.dispose()
    return None


def _read_every_event(conn: Connection, path: Path) -> None:
    after = 0
    while True:
        rows = conn.exec_driver_sql(
            "SELECT position, data, metadata FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, DEEP_CHECK_BATCH),
        ).all()
        if not rows:
            return
        for position, data, metadata in rows:
            for text in (data, metadata):
                try:
                    json.loads(text)
                except (TypeError, ValueError) as e:
                    raise damaged(path, f"the event at position {position} is not readable JSON: {e}") from e
        after = rows[-1][0]


def _start_afresh(
    settings: Settings,
    path: Path,
    reason: str,
    *,
    actor: str,
    detected_by: str,
    clock: Callable[[], datetime] | None,
) -> LogRepair:
    if _in_use(path):
        raise EventStoreUnavailable(
            f"the event log {path} is damaged ({reason}), and another Capsule process has it open; "
            "let it end or stop it (a `capsule worker`, a backup or a restore), then run `capsule repair-log`"
        )
    now = (clock or _utc_now)()
    repair_id = f"{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
    aside = _aside_name(path, now)
    set_aside_as = tuple(
        Path(f"{aside}{suffix}") for suffix in ("", *SIDE_SUFFIXES) if Path(f"{path}{suffix}").exists()
    )
    _remove_unfinished(path)
    recovered, problems = _repository_snapshots(settings, repair_id)
    started = EventLogStarted(
        job_id=repair_id,
        damaged_log=str(path.absolute()),
        set_aside_as=tuple(str(p.absolute()) for p in set_aside_as),
        reason=reason,
        detected_by=detected_by,
    )
    fresh = path.with_name(f"{path.name}{UNFINISHED_MARK}{repair_id}")
    try:
        _build(
            fresh,
            [started, *recovered],
            actor=actor,
            repair_id=repair_id,
            chain_key=ChainKeyFile(settings.resolved_event_log_key_file),
        )
    except BaseException:
        _remove_unfinished(path)  # a full disk, most likely: give its space back
        raise
    faults.point("repair-log:built")
    try:
        for suffix in ("", *SIDE_SUFFIXES):
            _keep_aside(Path(f"{path}{suffix}"), Path(f"{aside}{suffix}"))
        _sync_folder(path.parent)
        faults.point("repair-log:linked")
        # The WAL and the index beside the log belong to the damaged file, which keeps them under
        # its new name; left here, SQLite would apply that WAL to the new log.
        for suffix in SIDE_SUFFIXES:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        faults.point("repair-log:unlinked")
        os.replace(fresh, path)
        _sync_folder(path.parent)
    except OSError as e:
        fresh.unlink(missing_ok=True)
        where = f"the folder {path.parent}"
        if e.errno == errno.ENOSPC:
            raise disk_full(path.parent, e.strerror or "no space left on device") from e
        raise EventStoreUnavailable(
            f"the damaged event log {path} ({reason}) could not be set aside in {where} ({e.strerror}); "
            "make that folder writable for this user, then run `capsule repair-log`"
        ) from e
    return LogRepair(path, reason, set_aside_as, len(recovered), problems)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _in_use(path: Path) -> bool:
    """Whether another process has the log open: it then holds SQLite's lock on the -shm file."""
    shm = Path(f"{path}-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except OSError:
        return False  # no index file: no process has the log open in WAL mode
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_OFFSET)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, SHM_DMS_OFFSET)
        return False
    finally:
        os.close(fd)


def _aside_name(path: Path, now: datetime) -> Path:
    """`events.db.damaged-<UTC time>`; the name a killed repair already gave this file, if any."""
    for earlier in sorted(path.parent.glob(f"{path.name}{ASIDE_MARK}*")):
        if earlier.name.endswith(SIDE_SUFFIXES):
            continue
        with contextlib.suppress(OSError):
            if os.path.samefile(earlier, path):
                return earlier
    name = path.with_name(f"{path.name}{ASIDE_MARK}{now:%Y%m%dT%H%M%SZ}")
    candidate, n = name, 1
    while any(Path(f"{candidate}{suffix}").exists() for suffix in ("", *SIDE_SUFFIXES)):
        n += 1
        candidate = Path(f"{name}-{n}")
    return candidate


def _remove_unfinished(path: Path) -> None:
    # New logs a killed repair was building: they never held anything but what this repair rebuilds.
    for leftover in path.parent.glob(f"{path.name}{UNFINISHED_MARK}*"):
        leftover.unlink(missing_ok=True)


def _keep_aside(source: Path, target: Path) -> None:
    if not source.exists():
        return
    if target.exists() and os.path.samefile(source, target):
        return
    try:
        os.link(source, target)
    except OSError:
        os.rename(source, target)  # a file system without hard links: the log's name is empty a moment


def _repository_snapshots(settings: Settings, repair_id: str) -> tuple[list[Event], tuple[str, ...]]:
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415 - the engine loads only when needed

    try:
        repo = open_repository(settings)
        names = sorted(repo.backend.list("snapshots"))
    except (CapsuleError, OSError) as e:
        return [], (f"the repository's snapshots could not be listed ({e})",)
    found: list[SnapshotRecovered] = []
    problems = []
    for name in names:
        try:
            manifest = repo.load_snapshot(name)
        except (CapsuleError, OSError) as e:
            problems.append(f"snapshot {name[:12]} could not be read ({e})")
            continue
        found.append(
            SnapshotRecovered(
                job_id=repair_id,
                snapshot_id=name,
                kind=manifest.kind,
                source=manifest.source,
                time=manifest.time,
                made_by_job=manifest.job_id,
                totals=manifest.totals.model_dump(mode="json"),
            )
        )
    found.sort(key=lambda s: (s.time, s.snapshot_id))
    return list(found), tuple(problems)


def _build(fresh: Path, events: list[Event], *, actor: str, repair_id: str, chain_key: ChainKeyFile) -> None:
    """A complete new log at `fresh`, through the same schema and append as every log, sealed from
    its first event with the log's key (architecture.md 2.7)."""
    engine = make_engine(f"sqlite:///{fresh}")
    try:
        create_schema(engine, chain_key=chain_key)
        create_projection_schema(engine)
        store = EventStore(engine, upcasters=codec.upcasters(), chain_key=chain_key)
        store.append(
            codec.log_stream_id(repair_id),
            0,
            [codec.encode(e) for e in events],
            Metadata(actor=actor, correlation_id=repair_id),
            handlers=[ProjectionHandler()],
        )
    finally:
        # The last connection to close folds the WAL into the file and removes it.
        engine.dispose()
    if Path(f"{fresh}-wal").exists():
        raise EventStoreError(f"the new event log {fresh} kept a WAL file after it was closed; try again")
    Path(f"{fresh}-shm").unlink(missing_ok=True)  # an index of that WAL, nothing more
    with open(fresh, "rb") as f:
        os.fsync(f.fileno())


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
