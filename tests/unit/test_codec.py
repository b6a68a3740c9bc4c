"""Every domain event survives the trip into the log and back, and lands in its job's stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule.domain import backup_job, restore_job
from capsule.domain.errors import InvalidEvent, UnknownEvent
from capsule.domain.events import (
    EVENT_TYPES,
    Event,
    StepProgressed,
)
from capsule.orchestrator import codec
from capsule.orchestrator.eventstore import Metadata, NewEvent, StoredEvent
from tests.unit.event_samples import SAMPLES

JOB = "20261125-0a1b2c3d"
AT = datetime(2026, 11, 25, 14, 30, 5, 123456, tzinfo=UTC)


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
    with pytest.raises(UnknownEvent, match="SnapshotTeleported"):
        codec.decode(stored_as(NewEvent("SnapshotTeleported", 1, {"job_id": JOB})))
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
