"""What needs attention now, read from the projections: how old each kind's last good backup is,
whether the last backup of a kind or the last restore drill failed, which Drive destinations
wait for consent again (from the settings stream), and which destinations are behind: their last
upload failed, or they are paused for their rate limit (from each destination's stream).

`capsule status` (and its `--check`) and the alerts read the same `Health`, so that they never
disagree on what is wrong. The rules are the domain's (`domain/staleness.py`); this module only
gathers their inputs: the settings document, the newest snapshot of each kind, the last finished
jobs, the schedules' periods from croniter, and when the log began, through `Reads` (SQLAlchemy's
queries, or `capsule status`'s own on the default SQLite log: see `capsule.orchestrator.reads`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from capsule.domain import settings as model
from capsule.domain.staleness import (
    FinishedJob,
    Freshness,
    Incident,
    consent_needed,
    freshness,
    incidents,
    last_finished,
    period_of,
    upload_behind,
)
from capsule.orchestrator.cron import InvalidSchedule, upcoming
from capsule.orchestrator.reads import EngineReads, Reads, Row

if TYPE_CHECKING:
    from capsule.orchestrator.eventstore import EventStore
    from capsule.orchestrator.projections.queries import Database

KINDS = ("database", "files")
RECENT_BACKUPS = 200
"""Backups looked through for each kind's last finished one."""
RECENT_DRILLS = 20
PERIOD_RUNS = 8
"""Due times a schedule's period is the longest gap of: a week of a daily schedule."""


@dataclass(frozen=True)
class Health:
    """Each judged kind's freshness, and every incident open now (empty: all is well)."""

    freshness: list[Freshness]
    incidents: list[Incident]
    last_backups: dict[str, FinishedJob | None]
    """Each kind's last completed or failed backup."""
    last_drill: FinishedJob | None
    watched: tuple[str, ...] = ()
    """Incident keys beyond the fixed ones that may be open: `consent-<name>` of every Drive
    destination ever added, so that an alert raised for one is cleared once it is not wrong."""


def settings_document(db: Database) -> model.BackupSettings:
    """The settings as the `backup_settings` read model holds them now."""
    return settings_document_of(EngineReads(db))


def settings_document_of(reads: Reads) -> model.BackupSettings:
    """The settings as the `backup_settings` read model holds them now."""
    row = reads.settings_row()
    return model.from_values(json.loads(row["changed_values"]) if row else {})


def period(expression: str, zone: ZoneInfo, now: datetime) -> timedelta | None:
    """The longest gap between the schedule's next due times; None if it never comes round again."""
    try:
        return period_of(_upcoming(expression, zone, now.replace(minute=0, second=0, microsecond=0)))
    except InvalidSchedule:
        return None


@lru_cache(maxsize=64)
def _upcoming(expression: str, zone: ZoneInfo, hour: datetime) -> tuple[datetime, ...]:
    # Ticks come every few seconds; the period changes at most at a change of the clock.
    return tuple(upcoming(expression, zone, hour, PERIOD_RUNS))


def observe(
    db: Database, store: EventStore, document: model.BackupSettings, zone: ZoneInfo, now: datetime
) -> Health:
    """What needs attention at `now`, by the settings `document` in the schedules' `zone`."""
    return observe_reads(EngineReads(db, store), document, zone, now)


def observe_reads(reads: Reads, document: model.BackupSettings, zone: ZoneInfo, now: datetime) -> Health:
    """What needs attention at `now`, by the settings `document` in the schedules' `zone`."""
    last_good = {}
    for kind in KINDS:
        rows = reads.list_snapshots(1, kind)
        last_good[kind] = rows[0]["time"] if rows else None
    since = reads.first_recorded_at() or now
    fresh = freshness(document, lambda cron: period(cron, zone, now), last_good, since, now)
    backups = _finished(reads.list_jobs(limit=RECENT_BACKUPS, job_type="backup"))
    drills = _finished(reads.list_jobs(limit=RECENT_DRILLS, job_type="drill"))
    last_backups = {kind: last_finished(backups, kind) for kind in KINDS}
    last_drill = last_finished(drills)
    consents, watched = _consents(reads)
    behind, ever = _uploads(reads, now)
    found = incidents(fresh, last_backups, last_drill) + consents + behind
    return Health(fresh, found, last_backups, last_drill, tuple(sorted({*watched, *ever})))


def _consents(reads: Reads) -> tuple[list[Incident], tuple[str, ...]]:
    """The enabled Drive destinations that refused Capsule's authorization and wait for consent,
    and the incident keys of every Drive destination ever added."""
    from capsule.domain.settings import STREAM  # noqa: PLC0415

    stored = reads.read_stream(STREAM)
    ever = {
        f"consent-{row.data.get('name')}"
        for row in stored
        if row.type == "DestinationAdded" and row.data.get("kind") == "gdrive"
    }
    if not ever:  # no Drive destination: nothing to decode
        return [], ()
    from capsule.orchestrator.destinations import destinations_of  # noqa: PLC0415

    state = destinations_of(stored)
    wrong = [
        consent_needed(d.name, d.needs_consent)
        for d in state.by_name.values()
        if d.enabled and d.needs_consent is not None
    ]
    return wrong, tuple(sorted(ever))


def _uploads(reads: Reads, now: datetime) -> tuple[list[Incident], tuple[str, ...]]:
    """The enabled destinations whose copy is behind (last upload failed, or paused), and the
    incident keys of every destination ever added."""
    from capsule.domain.settings import STREAM  # noqa: PLC0415

    stored = reads.read_stream(STREAM)
    ever = tuple(
        sorted({f"upload-{row.data.get('name')}" for row in stored if row.type == "DestinationAdded"})
    )
    if not ever:
        return [], ()
    from capsule.orchestrator.destinations import destinations_of  # noqa: PLC0415

    wrong = []
    for d in destinations_of(stored).by_name.values():
        if not d.enabled or d.needs_consent is not None:  # consent has its own incident
            continue
        if d.paused_at(now):
            wrong.append(
                upload_behind(d.name, f"paused until {d.paused_until:%Y-%m-%d %H:%M} UTC: {d.pause_reason}")
            )
            continue
        last = reads.newest(
            d.stream_id,
            ("DestinationUploadFailed", "DestinationObjectsUploaded"),
            lambda row: row.type == "DestinationUploadFailed" or bool(row.data.get("done")),
        )
        if last is not None and last.type == "DestinationUploadFailed":
            when = last.recorded_at.strftime("%Y-%m-%d %H:%M")
            wrong.append(
                upload_behind(d.name, f"its last upload failed ({when} UTC): {last.data.get('error')}")
            )
    return wrong, ever


@dataclass(frozen=True)
class OffsiteCopy:
    """A destination as status shows it: where its copy is, and when it last held everything."""

    name: str
    kind: str
    location: str
    enabled: bool
    last_whole_copy_at: datetime | None
    """When an upload last left it holding every object of the local repository; None: never."""


def offsite_copies(reads: Reads) -> list[OffsiteCopy]:
    """Every destination, in the order they were added, with its last whole copy."""
    from capsule.domain.settings import STREAM  # noqa: PLC0415

    stored = reads.read_stream(STREAM)
    if not any(row.type == "DestinationAdded" for row in stored):
        return []
    from capsule.orchestrator.destinations import destinations_of  # noqa: PLC0415

    copies = []
    for d in destinations_of(stored).by_name.values():
        whole = reads.newest(
            d.stream_id, ("DestinationObjectsUploaded",), lambda row: bool(row.data.get("done"))
        )
        copies.append(
            OffsiteCopy(
                d.name, d.kind, d.describe(), d.enabled, whole.recorded_at if whole is not None else None
            )
        )
    return copies


def _finished(rows: list[Row]) -> list[FinishedJob]:
    return [
        FinishedJob(str(r["job_id"]), r.get("kind"), str(r["status"]), r.get("error"))
        for r in rows
        if r.get("status") in ("completed", "failed")
    ]


def cleared_line(key: str, seen: Health) -> str:
    """What the clearing of incident `key` says: the good news that cleared it."""
    what, _, kind = key.partition("-")
    if what == "consent":
        return f"{kind}: no longer waits for consent (renewed, turned off or removed)"
    if what == "upload":
        return f"{kind}: its copy caught up (or it was turned off or removed)"
    if what == "overdue":
        fresh = next((f for f in seen.freshness if f.kind == kind), None)
        return fresh.line() if fresh else f"{kind}: no longer watched (its schedules are disabled)"
    if what == "failed":
        last = seen.last_backups.get(kind)
        return f"{kind}: backup job {last.job_id} completed" if last else f"{kind}: no failed backup is left"
    last_drill = seen.last_drill
    return f"drill: the restore drill (job {last_drill.job_id}) passed" if last_drill else "drill: passed"
