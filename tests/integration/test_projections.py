"""The read models after realistic job histories, written by the live handler in each append.

Every history is made the way the orchestrator makes it: commands decided by the domain against the
job's stream, their events appended through the event store with the projection handler. Each test
runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from capsule.domain import backup_job, restore_job
from capsule.domain.commands import (
    CompleteStep,
    FailStep,
    RecordProgress,
    ReleaseBackup,
    RequestBackup,
    RequestRestore,
    RetryPolicy,
    StartStep,
)
from capsule.domain.errors import InvalidEvent
from capsule.domain.events import Event
from capsule.domain.jobs import JobState
from capsule.orchestrator import codec, projections
from capsule.orchestrator.codec import JobType
from capsule.orchestrator.eventstore import EventStore, Metadata, NewEvent
from capsule.orchestrator.projections import ProjectionHandler
from capsule.orchestrator.projections.tables import PROJECTIONS

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SOURCE = "/srv/pos/data/pos.db"
POLICY = RetryPolicy(max_attempts=3, base_backoff=timedelta(seconds=2), max_backoff=timedelta(seconds=10))
LEASE = timedelta(seconds=60)
MODULES: dict[JobType, Any] = {"backup": backup_job, "restore": restore_job}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class Jobs:
    """Sends commands as the orchestrator does: decide against the stream, append with the handler."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = Clock()
        self.store = EventStore(engine, upcasters=codec.upcasters(), clock=self.clock)
        self.handler = ProjectionHandler()

    def state(self, job_type: JobType, job_id: str) -> JobState:
        stored = self.store.read_stream(codec.stream_id(job_type, job_id))
        state: JobState = MODULES[job_type].replay(codec.decode(e) for e in stored)
        return state

    def send(self, job_type: JobType, command: Any, *, actor: str = "worker:till-1") -> list[Event]:
        stream = codec.stream_id(job_type, command.job_id)
        stored = self.store.read_stream(stream)
        state = MODULES[job_type].replay(codec.decode(e) for e in stored)
        decided: list[Event] = MODULES[job_type].decide(state, command)
        if decided:
            meta = Metadata(actor=actor, correlation_id=f"req-{command.job_id}")
            self.store.append(
                stream, len(stored), [codec.encode(e) for e in decided], meta, handlers=[self.handler]
            )
        return decided

    def request_backup(
        self, job_id: str, *, source: str = SOURCE, kind: str = "database", actor: str = "person:ana"
    ) -> list[Event]:
        """Queue it behind the backup the read model says is active for `source`, as the runtime does."""
        with self.store.transaction() as conn:
            active = projections.active_backup_for_source(conn, source)
            command = RequestBackup(
                job_id=job_id, now=self.clock(), kind=kind, source=source, active_job_id=active
            )
            decided = backup_job.decide(backup_job.initial_state(), command)
            self.store.append(
                codec.stream_id("backup", job_id),
                0,
                [codec.encode(e) for e in decided],
                Metadata(actor=actor, correlation_id=f"req-{job_id}"),
                handlers=[self.handler],
                conn=conn,
            )
        return decided

    def request_restore(
        self, job_id: str, snapshot_id: str, target: str, *, actor: str = "person:ana"
    ) -> None:
        command = RequestRestore(job_id=job_id, now=self.clock(), snapshot_id=snapshot_id, target=target)
        self.send("restore", command, actor=actor)

    def run(self, job_type: JobType, job_id: str, step: str, attempt: int = 1, **result: Any) -> None:
        """One attempt of `step` that starts, reports twice and completes with `result`."""
        common = {"job_id": job_id, "step": step, "attempt": attempt}
        self.send(job_type, StartStep(**common, now=self.clock.tick(), worker="till-1", lease=LEASE))
        for done in (40, 80):
            beat = RecordProgress(**common, now=self.clock.tick(), done=done, total=100, lease=LEASE)
            self.send(job_type, beat)
        self.send(job_type, CompleteStep(**common, now=self.clock.tick(), result=result))

    def fail(
        self, job_type: JobType, job_id: str, step: str, attempt: int, *, transient: bool = True
    ) -> None:
        common = {"job_id": job_id, "step": step, "attempt": attempt}
        self.send(job_type, StartStep(**common, now=self.clock.tick(10), worker="till-1", lease=LEASE))
        failure = FailStep(
            **common, now=self.clock.tick(), error="disk full", transient=transient, policy=POLICY
        )
        self.send(job_type, failure)

    def complete_backup(self, job_id: str, snapshot_id: str) -> None:
        self.run("backup", job_id, backup_job.STORE, stored={"blobs": 3})
        self.run("backup", job_id, backup_job.COMMIT, snapshot_id=snapshot_id, totals=TOTALS)


TOTALS = {
    "files": 1,
    "bytes": 4_194_304,
    "blobs": 1024,
    "new_blobs": 12,
    "new_bytes": 49_152,
    "stored_bytes": 20_480,
    "changed_chunks": 12,
    "duration_seconds": 1.75,
}


@pytest.fixture
def engine(event_store_engine: Engine) -> Iterator[Engine]:
    projections.create_projection_schema(event_store_engine)
    yield event_store_engine


@pytest.fixture
def jobs(engine: Engine) -> Jobs:
    return Jobs(engine)


def test_a_completed_backup_shows_its_job_and_its_snapshot(jobs: Jobs):
    jobs.request_backup("b1")
    requested_at = jobs.clock()
    jobs.complete_backup("b1", "snap-1")

    row = projections.get_job(jobs.engine, "b1")
    assert row is not None
    assert {k: row[k] for k in ("job_type", "kind", "source", "snapshot_id", "status", "error")} == {
        "job_type": "backup",
        "kind": "database",
        "source": SOURCE,
        "snapshot_id": "snap-1",
        "status": "completed",
        "error": None,
    }
    assert (row["current_step"], row["attempt"], row["progress_done"], row["queued_behind"]) == (
        None,
        None,
        None,
        None,
    )
    assert row["requested_at"] == requested_at
    assert row["started_at"] == T0 + timedelta(seconds=1)
    assert row["finished_at"] == row["updated_at"] == jobs.clock()
    assert (row["actor"], row["correlation_id"]) == ("person:ana", "req-b1")
    assert row["last_position"] == jobs.store.last_position()

    [snapshot] = projections.list_snapshots(jobs.engine, limit=10)
    assert snapshot == {
        "snapshot_id": "snap-1",
        "job_id": "b1",
        "kind": "database",
        "source": SOURCE,
        "time": jobs.clock(),
        "files": 1,
        "bytes": 4_194_304,
        "blobs": 1024,
        "new_blobs": 12,
        "new_bytes": 49_152,
        "stored_bytes": 20_480,
        "duration_seconds": 1.75,
    }
    assert projections.unfinished_jobs(jobs.engine) == []
    assert projections.get_restore_job(jobs.engine, "b1") is None


def test_a_running_step_shows_its_attempt_and_last_heartbeat(jobs: Jobs):
    jobs.request_backup("b1")
    jobs.send(
        "backup",
        StartStep(job_id="b1", step="store", attempt=1, now=jobs.clock.tick(), worker="w", lease=LEASE),
    )
    jobs.send(
        "backup", RecordProgress(job_id="b1", step="store", attempt=1, now=jobs.clock.tick(), done=7, total=9)
    )

    row = projections.get_job(jobs.engine, "b1")
    assert row is not None
    assert (row["status"], row["current_step"], row["attempt"]) == ("running", "store", 1)
    assert (row["progress_done"], row["progress_total"], row["finished_at"]) == (7, 9, None)
    assert projections.unfinished_jobs(jobs.engine) == [("b1", "backup")]


def test_a_backup_that_fails_after_its_retries_says_why_and_when(jobs: Jobs):
    jobs.request_backup("b1")
    jobs.fail("backup", "b1", "store", 1)
    retrying = projections.get_job(jobs.engine, "b1")
    assert retrying is not None
    assert (retrying["status"], retrying["attempt"], retrying["error"]) == ("retrying", 1, None)

    jobs.fail("backup", "b1", "store", 2)
    jobs.fail("backup", "b1", "store", 3)

    row = projections.get_job(jobs.engine, "b1")
    assert row is not None
    assert (row["status"], row["current_step"], row["attempt"]) == ("failed", "store", 3)
    assert row["error"] == "step 'store' failed 3 times, the last time with: disk full"
    assert row["started_at"] == T0 + timedelta(seconds=10)
    assert row["finished_at"] == jobs.clock()
    assert row["snapshot_id"] is None
    assert projections.list_snapshots(jobs.engine, limit=10) == []
    assert projections.list_jobs(jobs.engine, limit=10, status="failed") == [row]


def test_a_backup_queued_behind_another_waits_until_released(jobs: Jobs):
    jobs.request_backup("b1")
    jobs.run("backup", "b1", "store")
    assert projections.active_backup_for_source(jobs.engine, SOURCE) == "b1"

    jobs.clock.tick()
    jobs.request_backup("b2")
    queued = projections.get_job(jobs.engine, "b2")
    assert queued is not None
    assert (queued["status"], queued["queued_behind"]) == ("queued", "b1")
    assert projections.jobs_queued_behind(jobs.engine, "b1") == ["b2"]
    assert projections.active_backup_for_source(jobs.engine, SOURCE) == "b1"
    assert projections.active_backup_for_source(jobs.engine, "/elsewhere.db") is None

    jobs.run("backup", "b1", "commit", snapshot_id="snap-1", totals=TOTALS)
    assert projections.active_backup_for_source(jobs.engine, SOURCE) is None
    for waiting in projections.jobs_queued_behind(jobs.engine, "b1"):
        jobs.send("backup", ReleaseBackup(job_id=waiting, now=jobs.clock.tick()), actor="system")

    released = projections.get_job(jobs.engine, "b2")
    assert released is not None
    assert (released["status"], released["queued_behind"], released["actor"]) == (
        "pending",
        "b1",
        "person:ana",
    )
    assert projections.jobs_queued_behind(jobs.engine, "b1") == []
    assert projections.active_backup_for_source(jobs.engine, SOURCE) == "b2"
    assert projections.unfinished_jobs(jobs.engine) == [("b2", "backup")]


UPLOADS = "/srv/pos/uploads/products"


def test_a_backup_of_all_queues_behind_a_database_backup_and_a_files_backup_does_not(jobs: Jobs):
    both = backup_job.all_source(SOURCE, UPLOADS)
    jobs.request_backup("db")
    jobs.run("backup", "db", backup_job.STORE)

    jobs.clock.tick()
    jobs.request_backup("all", source=both, kind="all")
    jobs.clock.tick()
    jobs.request_backup("files", source=UPLOADS, kind="files")

    rows = {job_id: projections.get_job(jobs.engine, job_id) for job_id in ("all", "files")}
    assert {k: (r["status"], r["queued_behind"]) for k, r in rows.items() if r} == {
        "all": ("queued", "db"),
        "files": ("pending", None),
    }
    assert projections.jobs_queued_behind(jobs.engine, "db") == ["all"]
    assert projections.active_backup_for_source(jobs.engine, UPLOADS) == "files"
    assert projections.active_backup_for_source(jobs.engine, SOURCE) == "db"
    assert projections.active_backup_for_source(jobs.engine, both) == "files"  # the latest of either
    assert projections.active_backup_for_source(jobs.engine, "/srv/other.db") is None


def test_a_backup_of_all_shows_two_snapshots_and_the_warnings_of_its_steps(jobs: Jobs):
    jobs.request_backup("all", source=backup_job.all_source(SOURCE, UPLOADS), kind="all")
    warnings = {"count": 3, "items": ["a: skipped", "b: skipped", "c: kept"]}
    jobs.run("backup", "all", "store:database", stored={"blobs": 3})
    jobs.run(
        "backup",
        "all",
        "commit:database",
        snapshot_id="snap-db",
        kind="database",
        source=SOURCE,
        totals=TOTALS,
    )
    jobs.run("backup", "all", "store:files", files={"files": 2}, warnings=warnings)
    jobs.run(
        "backup", "all", "commit:files", snapshot_id="snap-files", kind="files", source=UPLOADS, totals=TOTALS
    )

    row = projections.get_job(jobs.engine, "all")
    assert row is not None
    assert (row["status"], row["kind"], row["snapshot_id"], row["warnings"]) == (
        "completed",
        "all",
        "snap-db",
        3,
    )
    snapshots = {s["snapshot_id"]: s for s in projections.list_snapshots(jobs.engine, limit=10)}
    assert {sid: (s["kind"], s["source"], s["job_id"]) for sid, s in snapshots.items()} == {
        "snap-db": ("database", SOURCE, "all"),
        "snap-files": ("files", UPLOADS, "all"),
    }
    jobs.request_backup("db")
    jobs.complete_backup("db", "snap-2")
    plain = projections.get_job(jobs.engine, "db")
    assert plain is not None and plain["warnings"] is None


def test_an_in_place_restore_keeps_where_the_live_database_was_saved(jobs: Jobs):
    safety = "/srv/pos/data/safety/pos-before-restore-r1.db"
    jobs.request_restore("r1", "snap-1", restore_job.IN_PLACE)
    staging = "/srv/pos/staging/r1.db"
    jobs.run("restore", "r1", restore_job.STAGE, snapshot_id="snap-1", staged=staging, safety_copy=safety)
    staged = projections.get_restore_job(jobs.engine, "r1")
    assert staged is not None
    assert (staged["status"], staged["safety_copy"], staged["files"]) == ("running", safety, None)

    jobs.run(
        "restore", "r1", restore_job.APPLY, snapshot_id="snap-1", safety_copy=safety, files=1, bytes=8192
    )

    assert projections.get_restore_job(jobs.engine, "r1") == {
        "job_id": "r1",
        "snapshot_id": "snap-1",
        "target": "in-place",
        "force": False,
        "check": True,
        "status": "completed",
        "files": 1,
        "bytes": 8192,
        "safety_copy": safety,
        "requested_at": T0,
        "finished_at": jobs.clock(),
        "error": None,
    }
    row = projections.get_job(jobs.engine, "r1")
    assert row is not None
    assert (row["job_type"], row["kind"], row["source"], row["snapshot_id"]) == (
        "restore",
        None,
        "in-place",
        "snap-1",
    )
    assert projections.list_snapshots(jobs.engine, limit=10) == []


def test_a_result_with_odd_figures_reads_them_as_unknown(jobs: Jobs):
    jobs.request_restore("r1", "snap-1", "restored")
    jobs.run("restore", "r1", restore_job.RESTORE, files="many", bytes=2**70, safety_copy=3)

    row = projections.get_restore_job(jobs.engine, "r1")
    assert row is not None
    assert (row["status"], row["files"], row["bytes"], row["safety_copy"]) == ("completed", None, None, None)


def test_lists_are_newest_first_and_filter_by_status_and_type(jobs: Jobs):
    jobs.request_backup("b1")
    jobs.complete_backup("b1", "snap-1")
    jobs.clock.tick(60)
    jobs.request_restore("r1", "snap-1", "restored")
    jobs.clock.tick(60)
    jobs.request_backup("b2", source="/srv/other.db")
    jobs.complete_backup("b2", "snap-2")

    assert [r["job_id"] for r in projections.list_jobs(jobs.engine, limit=10)] == ["b2", "r1", "b1"]
    assert [r["job_id"] for r in projections.list_jobs(jobs.engine, limit=2)] == ["b2", "r1"]
    assert [r["job_id"] for r in projections.list_jobs(jobs.engine, 10, job_type="backup")] == ["b2", "b1"]
    assert [r["job_id"] for r in projections.list_jobs(jobs.engine, 10, status="pending")] == ["r1"]
    assert [s["snapshot_id"] for s in projections.list_snapshots(jobs.engine, limit=10)] == [
        "snap-2",
        "snap-1",
    ]
    assert [s["snapshot_id"] for s in projections.list_snapshots(jobs.engine, limit=1)] == ["snap-2"]
    assert projections.unfinished_jobs(jobs.engine) == [("r1", "restore")]
    with jobs.engine.connect() as conn:
        assert projections.get_job(conn, "r1") == projections.get_job(jobs.engine, "r1")
    assert projections.get_job(jobs.engine, "nope") is None


def test_every_checkpoint_follows_each_append(jobs: Jobs):
    with jobs.engine.connect() as conn:
        assert projections.checkpoints(conn) == {t.name: 0 for t in PROJECTIONS}
    jobs.request_backup("b1")
    jobs.run("backup", "b1", "store")

    last = jobs.store.last_position()
    with jobs.engine.connect() as conn:
        assert projections.checkpoints(conn) == {t.name: last for t in PROJECTIONS}


def test_events_appended_without_the_handler_are_applied_by_the_next_append_through_it(jobs: Jobs):
    jobs.request_backup("b1")
    bare = EventStore(jobs.engine, upcasters=codec.upcasters(), clock=jobs.clock)
    state = jobs.state("backup", "b1")
    start = StartStep(job_id="b1", step="store", attempt=1, now=jobs.clock.tick(), worker="w", lease=LEASE)
    events = backup_job.decide(state, start)
    bare.append("backup-b1", 1, [codec.encode(e) for e in events], Metadata(actor="w", correlation_id="x"))
    bare.append(
        "unrelated-stream", 0, [NewEvent("Noted", 1, {"n": 1})], Metadata(actor="w", correlation_id="x")
    )
    behind = projections.get_job(jobs.engine, "b1")
    assert behind is not None
    assert behind["status"] == "pending"

    jobs.request_restore("r1", "snap-1", "restored")

    caught_up = projections.get_job(jobs.engine, "b1")
    assert caught_up is not None
    assert (caught_up["status"], caught_up["started_at"]) == ("running", jobs.clock())
    with jobs.engine.connect() as conn:
        assert projections.checkpoint(conn) == jobs.store.last_position()


def test_read_models_without_checkpoint_rows_catch_up_and_count_from_there(jobs: Jobs):
    jobs.request_backup("b1")
    with jobs.engine.begin() as conn:
        conn.execute(projections.projection_checkpoints.delete())
        conn.execute(projections.jobs.delete())

    jobs.request_backup("b2", source="/srv/other.db")

    assert [r["job_id"] for r in projections.list_jobs(jobs.engine)] == ["b2", "b1"]
    last = jobs.store.last_position()
    with jobs.engine.connect() as conn:
        assert projections.checkpoints(conn) == {t.name: last for t in PROJECTIONS}


def test_projecting_the_same_events_again_changes_nothing(jobs: Jobs):
    jobs.request_backup("b1")
    jobs.complete_backup("b1", "snap-1")
    before = projections.get_job(jobs.engine, "b1")

    with jobs.store.transaction() as conn:
        projections.project(conn, jobs.store.read_stream("backup-b1", conn=conn))

    assert projections.get_job(jobs.engine, "b1") == before


def test_an_event_the_projections_cannot_apply_is_not_appended(jobs: Jobs):
    jobs.request_backup("b1")
    position = jobs.store.last_position()
    completed_out_of_turn = NewEvent("BackupCompleted", 1, {"job_id": "someone-else", "snapshot_id": "s"})

    with pytest.raises(InvalidEvent, match="someone-else"):
        jobs.store.append(
            "backup-b1",
            1,
            [completed_out_of_turn],
            Metadata(actor="w", correlation_id="x"),
            handlers=[jobs.handler],
        )

    assert jobs.store.last_position() == position
    with jobs.engine.connect() as conn:
        assert conn.execute(select(projections.jobs.c.status)).scalars().all() == ["pending"]
