"""One sample of every event type, for the tests that every type is registered, documented and
comes back from the log unchanged (`tests/unit/domain/test_events.py`, `tests/unit/test_codec.py`).
A new event type gets its sample here, once."""

from __future__ import annotations

from datetime import UTC, datetime

from capsule.domain.errors import Category
from capsule.domain.events import (
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
    SnapshotForgotten,
    SnapshotRecovered,
    SnapshotTagsChanged,
    StepCompleted,
    StepFailed,
    StepInterrupted,
    StepLeaseExpired,
    StepProgressed,
    StepStarted,
)

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
    SnapshotForgotten(
        job_id=JOB,
        snapshot_id="cd" * 32,
        kind="database",
        time=AT,
        reason="policy",
        policy={"keep-last": 3, "keep-daily": 14, "keep-within": None, "keep-tag": []},
        rule="daily 2026-12-05 is kept by abababababab",
    ),
    SnapshotTagsChanged(job_id=JOB, snapshot_id="cd" * 32, added=("keep",), removed=()),
]
