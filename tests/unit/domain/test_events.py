"""The event catalogue: every event is frozen, named, versioned, and comes back from the log unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from capsule.domain import backup_job, events
from capsule.domain.errors import CapsuleError, Category, InvalidEvent, UnknownEvent
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
    JobCancelled,
    JobFailed,
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
    event_payload,
    event_type,
    load_event,
)
from tests.unit.domain import JOB, T0, backup_requested, started

SAMPLES: list[Event] = [
    BackupRequested(
        job_id=JOB, kind="database", source="data/pos.db", full=True, tags=("a",), plan=("store", "commit")
    ),
    BackupQueued(job_id=JOB, behind_job_id="job-0"),
    BackupReleased(job_id=JOB),
    BackupCompleted(job_id=JOB, snapshot_id="s1"),
    BackupFailed(job_id=JOB, step="store", reason="the disk is full"),
    BackupCancelled(job_id=JOB),
    RestoreRequested(
        job_id=JOB, snapshot_id="s1", target="in-place", force=False, check=True, plan=("stage", "apply")
    ),
    RestoreCompleted(job_id=JOB, result={"files": [{"path": "pos.db", "size": 4096}], "ok": True}),
    RestoreFailed(job_id=JOB, step="apply", reason="the database is locked"),
    RestoreCancelled(job_id=JOB),
    StepStarted(job_id=JOB, step="store", attempt=1, worker="host-1:42", lease_expires_at=T0),
    StepProgressed(
        job_id=JOB,
        step="store",
        attempt=2,
        done=5,
        total=None,
        detail={"pack": "p1", "ratio": 0.5},
        lease_expires_at=T0,
    ),
    StepCompleted(job_id=JOB, step="commit", attempt=1, result={"snapshot_id": "s1", "totals": {"files": 1}}),
    StepFailed(
        job_id=JOB,
        step="store",
        attempt=1,
        error="timed out",
        transient=True,
        retry_at=T0,
        category=Category.UNAVAILABLE,
    ),
    StepFailed(
        job_id=JOB,
        step="store",
        attempt=5,
        error="gone",
        transient=False,
        retry_at=None,
        category=Category.NOT_FOUND,
    ),
    StepLeaseExpired(job_id=JOB, step="store", attempt=3),
    StepInterrupted(job_id=JOB, step="store", attempt=2, reason="interrupted (SIGINT)"),
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
        time=T0,
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


def concrete_event_classes(base: type[Event] = Event) -> set[type[Event]]:
    found = set()
    for cls in base.__subclasses__():
        if cls not in (JobFailed, JobCancelled):
            found.add(cls)
        found |= concrete_event_classes(cls)
    return found


def test_the_registry_holds_every_event_class_under_its_own_name():
    assert set(EVENT_TYPES.values()) == concrete_event_classes()
    assert all(
        EVENT_TYPES[cls.type_name] is cls and cls.type_name == cls.__name__ for cls in EVENT_TYPES.values()
    )


def test_every_event_class_has_a_sample():
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize(
    "cls", sorted(EVENT_TYPES.values(), key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_every_event_is_documented_versioned_and_named_in_the_past_tense(cls):
    assert cls.schema_version >= 1
    assert cls.__doc__ and "\n" not in cls.__doc__.strip()
    assert cls.__name__.endswith(("ed", "Expired"))
    assert "job_id" in cls.model_fields


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_comes_back_from_the_log_unchanged(event):
    stored = json.loads(json.dumps(event_payload(event)))
    loaded = load_event(event_type(event), stored)
    assert loaded == event
    assert type(loaded) is type(event)


def test_payloads_are_plain_json_with_utc_times():
    assert event_payload(started("store")) == {
        "job_id": JOB,
        "step": "store",
        "attempt": 1,
        "worker": "w1",
        "lease_expires_at": "2024-05-01T12:05:00Z",
    }


def test_events_are_frozen_and_refuse_unknown_fields():
    event = BackupCompleted(job_id=JOB, snapshot_id="s1")
    with pytest.raises(ValidationError):
        event.snapshot_id = "s2"
    with pytest.raises(ValidationError):
        BackupCompleted(job_id=JOB, snapshot_id="s1", actor="admin")


def test_times_must_carry_a_timezone_and_are_kept_in_utc():
    with pytest.raises(ValidationError):
        StepStarted(
            job_id=JOB, step="store", attempt=1, worker="w", lease_expires_at=datetime(2024, 5, 1, 12)
        )
    paris = timezone(timedelta(hours=2))
    event = StepStarted(
        job_id=JOB,
        step="store",
        attempt=1,
        worker="w",
        lease_expires_at=datetime(2024, 5, 1, 14, tzinfo=paris),
    )
    assert event.lease_expires_at == T0
    assert event.lease_expires_at.tzinfo is UTC


def test_an_unknown_type_is_refused():
    with pytest.raises(UnknownEvent, match="'BackupExploded'"):
        load_event("BackupExploded", {"job_id": JOB})
    assert issubclass(UnknownEvent, CapsuleError)


def test_an_event_at_another_schema_version_than_the_class_is_refused():
    with pytest.raises(UnknownEvent, match="version 2, newer than the version 1 this Capsule reads"):
        load_event("BackupReleased", {"job_id": JOB}, schema_version=2)
    assert load_event("BackupReleased", {"job_id": JOB}, schema_version=1) == BackupReleased(job_id=JOB)


def test_an_event_not_brought_up_to_the_current_version_is_refused(monkeypatch):
    monkeypatch.setattr(BackupReleased, "schema_version", 2)
    with pytest.raises(UnknownEvent, match="version 1, older than the version 2"):
        load_event("BackupReleased", {"job_id": JOB}, schema_version=1)


def test_stored_data_that_does_not_fit_its_type_is_refused():
    with pytest.raises(InvalidEvent, match="BackupCompleted"):
        load_event("BackupCompleted", {"job_id": JOB})


def test_step_results_must_be_json():
    with pytest.raises(ValidationError):
        StepCompleted(job_id=JOB, step="store", attempt=1, result={"when": T0})


def test_a_log_must_begin_with_the_request():
    with pytest.raises(InvalidEvent, match="does not begin with the job's request"):
        backup_job.replay([started("store")])


def test_a_log_cannot_hold_another_jobs_events():
    other = StepStarted(job_id="job-2", step="store", attempt=1, worker="w1", lease_expires_at=T0)
    with pytest.raises(InvalidEvent, match="an event of job 'job-2' is in the log of job 'job-1'"):
        backup_job.replay([backup_requested(), other])


def test_a_log_cannot_name_a_step_outside_the_plan():
    with pytest.raises(InvalidEvent, match="step 'retention', which is not in its plan"):
        backup_job.replay([backup_requested(), started("retention")])


def test_a_backup_log_cannot_hold_restore_events():
    with pytest.raises(InvalidEvent, match="RestoreFailed event does not belong"):
        backup_job.replay([backup_requested(), RestoreFailed(job_id=JOB, step="store", reason="x")])


def test_a_plan_can_hold_upload_and_retention_steps():
    plan = ("store", "commit", backup_job.upload_step("gdrive"), backup_job.RETENTION)
    state = backup_job.replay([backup_requested(plan)])
    assert state.plan == plan


def test_the_module_lists_no_event_twice():
    assert len(EVENT_TYPES) == len({id(c) for c in EVENT_TYPES.values()})
    with pytest.raises(TypeError, match="share the type name"):
        events._registry(BackupReleased, BackupReleased)
