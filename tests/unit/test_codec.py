"""Every domain event survives the trip into the log and back, and lands in its job's stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule.domain import backup_job, restore_job
from capsule.domain.errors import Category, InvalidEvent, UnknownEvent
from capsule.domain.events import (
    EVENT_TYPES,
    AlertCleared,
    AlertDelivered,
    AlertDeliveryFailed,
    AlertRaised,
    BackupCancelled,
    BackupCompleted,
    BackupFailed,
    BackupQueued,
    BackupReleased,
    BackupRequested,
    DrillCancelled,
    DrillCompleted,
    DrillFailed,
    DrillRequested,
    Event,
    EventLogStarted,
    RestoreCancelled,
    RestoreCompleted,
    RestoreFailed,
    RestoreRequested,
    ScheduleFired,
    SettingChange,
    SettingsChanged,
    SnapshotRecovered,
    StepCompleted,
    StepFailed,
    StepInterrupted,
    StepLeaseExpired,
    StepProgressed,
    StepStarted,
)
from capsule.orchestrator import codec
from capsule.orchestrator.eventstore import Metadata, NewEvent, StoredEvent

JOB = "20261125-0a1b2c3d"
AT = datetime(2026, 11, 25, 14, 30, 5, 123456, tzinfo=UTC)

SAMPLES: list[Event] = [
    BackupRequested(
        job_id=JOB,
        kind="database",
        source="data/pos.db",
        full=True,
        tags=("nightly", "ü"),
        plan=("store", "commit"),
    ),
    BackupQueued(job_id=JOB, behind_job_id="20261125-ffff0000"),
    BackupReleased(job_id=JOB),
    BackupCompleted(job_id=JOB, snapshot_id="ab" * 32),
    BackupFailed(
        job_id=JOB, step="store", reason="step 'store' failed 5 times, the last time with: disk full"
    ),
    BackupCancelled(job_id=JOB),
    RestoreRequested(
        job_id=JOB, snapshot_id="ab12", target="in-place", force=False, check=True, plan=("stage", "apply")
    ),
    RestoreCompleted(
        job_id=JOB, result={"files": 1, "bytes": 4096, "safety_copy": "data/safety/pos.db", "ok": None}
    ),
    RestoreFailed(job_id=JOB, step="apply", reason="the staged copy fails SQLite's check"),
    RestoreCancelled(job_id=JOB),
    StepStarted(job_id=JOB, step="store", attempt=2, worker="till-1:42:abc", lease_expires_at=AT),
    StepProgressed(
        job_id=JOB,
        step="store",
        attempt=2,
        done=10,
        total=None,
        detail={"phase": "pages", "nested": [1, 2.5, {"x": True}]},
        lease_expires_at=AT,
    ),
    StepCompleted(
        job_id=JOB, step="commit", attempt=1, result={"snapshot_id": "ab" * 32, "totals": {"files": 1}}
    ),
    StepFailed(
        job_id=JOB,
        step="store",
        attempt=3,
        error="locked",
        transient=True,
        retry_at=AT,
        category=Category.LOCKED,
    ),
    StepLeaseExpired(job_id=JOB, step="store", attempt=1),
    StepInterrupted(job_id=JOB, step="store", attempt=1, reason="interrupted (SIGTERM)"),
    EventLogStarted(
        job_id=JOB,
        damaged_log="data/capsule/events.db",
        set_aside_as=("data/capsule/events.db.damaged-20261125T143005Z",),
        reason="database disk image is malformed",
        detected_by="repair-log",
    ),
    SnapshotRecovered(
        job_id=JOB,
        snapshot_id="ab" * 32,
        kind="database",
        source="data/pos.db",
        time=AT,
        made_by_job=None,
        totals={"files": 1, "bytes": 4096, "duration_seconds": 0.5},
    ),
    SettingsChanged(
        job_id=JOB,
        changes=(
            SettingChange(key="schedules.database.cron", old="0 * * * *", new="30 * * * *"),
            SettingChange(key="timezone", old=None, new="Europe/Madrid"),
        ),
    ),
    ScheduleFired(
        job_id=JOB,
        schedule="database",
        due_at=datetime(2026, 12, 6, 13, 0, tzinfo=UTC),
        missed=5,
        late_seconds=1200.0,
        coalesced=False,
    ),
    DrillRequested(
        job_id=JOB,
        database_source="/srv/shop/data/pos.db",
        files_source="/srv/shop/data/uploads/products",
        sample_files=20,
        sample_percent=2.0,
        plan=("prove:database", "prove:files"),
    ),
    DrillCompleted(
        job_id=JOB,
        database_snapshot_id="ab" * 32,
        files_snapshot_id="cd" * 32,
        integrity_check="ok",
        foreign_key_check="2 row(s) break a foreign key",
        images_total=500,
        images_sampled=20,
        images_checked=20,
        bytes=20_971_520,
        seconds=3.25,
    ),
    DrillFailed(job_id=JOB, step="prove:files", reason="image 'a.jpg' does not restore"),
    DrillCancelled(job_id=JOB),
    AlertRaised(
        job_id=JOB,
        incident="overdue-database",
        reason="overdue",
        subject="database",
        summary="database: last good backup 3 h 10 min ago, OVERDUE (hourly)",
        cause_job_id=None,
        at=datetime(2026, 12, 6, 13, 0, tzinfo=UTC),
    ),
    AlertCleared(
        job_id=JOB,
        incident="overdue-database",
        summary="database: last good backup 1 min ago (hourly)",
        at=datetime(2026, 12, 6, 14, 0, tzinfo=UTC),
    ),
    AlertDelivered(
        job_id=JOB,
        incident="overdue-database",
        notice="raised",
        channel="email",
        target="owner@shop.example",
        attempt=1,
        at=datetime(2026, 12, 6, 13, 0, tzinfo=UTC),
    ),
    AlertDeliveryFailed(
        job_id=JOB,
        incident="overdue-database",
        notice="cleared",
        channel="webhook",
        target="https://hooks.example.com/…",
        attempt=2,
        error="HTTP 503 Service Unavailable",
        next_try_at=datetime(2026, 12, 6, 14, 1, tzinfo=UTC),
        at=datetime(2026, 12, 6, 14, 0, 30, tzinfo=UTC),
    ),
]


def stored_as(new: NewEvent, *, position: int = 7) -> StoredEvent:
    """The event as the store gives it back: its payload through JSON, as a database column keeps it."""
    return StoredEvent(
        position=position,
        stream_id=codec.stream_id("backup", JOB),
        version=3,
        type=new.type,
        schema_version=new.schema_version,
        data=json.loads(json.dumps(new.data)),
        metadata=Metadata(actor="person:ana", correlation_id=JOB),
        recorded_at=AT,
    )


def test_the_samples_cover_every_event_type():
    assert {type(e).type_name for e in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).type_name)
def test_every_event_type_round_trips_through_the_log(event: Event):
    new = codec.encode(event)

    assert new.type == type(event).type_name
    assert new.schema_version == type(event).schema_version
    assert codec.decode(stored_as(new)) == event


@pytest.mark.parametrize("cls", EVENT_TYPES.values(), ids=list(EVENT_TYPES))
def test_the_store_expects_the_schema_version_each_class_writes(cls: type[Event]):
    assert codec.upcasters().latest(cls.type_name) == cls.schema_version


def test_each_registry_is_new_so_a_caller_cannot_change_anothers():
    first = codec.upcasters()
    first.register("StepLeaseExpired", 1, dict)

    assert codec.upcasters().latest("StepLeaseExpired") == 1


@given(
    offset_minutes=st.integers(-14 * 60, 14 * 60),
    instant=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    detail=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5) | st.none(), max_size=4),
)
def test_instants_in_any_zone_come_back_as_the_same_utc_instant(
    offset_minutes: int, instant: datetime, detail: dict
):
    local = instant.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    event = StepProgressed(
        job_id=JOB, step="store", attempt=1, done=0, total=1, detail=detail, lease_expires_at=local
    )

    back = codec.decode(stored_as(codec.encode(event)))

    assert back == event
    assert back.lease_expires_at == local
    assert back.lease_expires_at.utcoffset() == timedelta(0)


def test_an_unknown_type_or_a_newer_schema_version_is_refused_by_name():
    with pytest.raises(UnknownEvent, match="SnapshotForgotten"):
        codec.decode(stored_as(NewEvent("SnapshotForgotten", 1, {"job_id": JOB})))
    with pytest.raises(UnknownEvent, match="schema version 2"):
        codec.decode(stored_as(NewEvent("BackupReleased", 2, {"job_id": JOB})))


def test_a_payload_that_does_not_fit_its_type_is_refused():
    with pytest.raises(InvalidEvent, match="BackupQueued"):
        codec.decode(stored_as(NewEvent("BackupQueued", 1, {"job_id": JOB})))


def test_job_streams_are_named_as_the_domain_names_them():
    assert codec.stream_id("backup", JOB) == backup_job.stream_id(JOB)
    assert codec.stream_id("restore", JOB) == restore_job.stream_id(JOB)
    assert codec.job_of_stream(backup_job.stream_id(JOB)) == ("backup", JOB)
    assert codec.job_of_stream(restore_job.stream_id("r-1")) == ("restore", "r-1")
    assert codec.job_of_stream("destination-gdrive") is None
    assert codec.job_of_stream("backup-") is None
