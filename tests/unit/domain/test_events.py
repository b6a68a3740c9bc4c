"""The event catalogue: every event is frozen, named, versioned, and comes back from the log unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from capsule.domain import backup_job, events
from capsule.domain.errors import CapsuleError, InvalidEvent, UnknownEvent
from capsule.domain.events import (
    EVENT_TYPES,
    BackupCompleted,
    BackupReleased,
    Event,
    JobCancelled,
    JobFailed,
    RestoreFailed,
    StepCompleted,
    StepStarted,
    event_payload,
    event_type,
    load_event,
)
from tests.unit.domain import JOB, T0, backup_requested, started
from tests.unit.event_samples import SAMPLES


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
    assert cls.__name__.endswith(("ed", "Expired", "Forgotten"))
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
