"""Replaying the log rebuilds, row for row, the read models the live handler wrote.

The main check is a state machine: long random histories of backups and restores, driven through
the domain's deciders (commands the domain refuses are dropped, as the orchestrator drops them),
appended with the live handler, and rebuilt by `replay` now and then and at the end. Each test
runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, func, inspect, select

from capsule.domain import backup_job, restore_job
from capsule.domain.commands import (
    CancelJob,
    CompleteStep,
    ExpireLease,
    FailStep,
    RecordProgress,
    ReleaseBackup,
    StartStep,
)
from capsule.domain.errors import InvalidCommand
from capsule.domain.events import (
    BackupQueued,
    Event,
    EventLogStarted,
    SnapshotForgotten,
    SnapshotRecovered,
    SnapshotTagsChanged,
    StepProgressed,
)
from capsule.domain.jobs import (
    ExpireStepLease,
    Finished,
    JobState,
    RunStep,
    WaitForJob,
    WaitUntil,
    current_step,
    is_finished,
    next_action,
)
from capsule.orchestrator import codec, projections
from capsule.orchestrator.codec import JobType
from capsule.orchestrator.db import default_event_store_url, make_engine
from capsule.orchestrator.eventstore import EventStore, Metadata, NewEvent, Upcasters, create_schema, events
from capsule.orchestrator.projections import ProjectionHandler
from capsule.orchestrator.projections.scan import Scan
from capsule.orchestrator.projections.tables import PROJECTIONS, projection_checkpoints
from tests.integration.test_projections import LEASE, POLICY, TOTALS, Jobs

SOURCES = ["/srv/a/pos.db", "/srv/b/pos.db"]
TARGETS = [restore_job.IN_PLACE, "/srv/restored"]
KINDS = ["start", "progress", "complete", "fail", "expire", "cancel"]
# Few enough that most moves go to taking jobs to their end, rather than to starting new ones.
MAX_JOBS = 6


def tables(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every read model and checkpoint, in primary key order."""
    with engine.connect() as conn:
        return {
            t.name: [dict(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()]
            for t in (*PROJECTIONS, projection_checkpoints)
        }


def assert_replay_rebuilds_what_is_live(jobs: Jobs, workers: int = 1) -> None:
    live = tables(jobs.engine)
    report = projections.replay(jobs.engine, jobs.store, batch=50, workers=workers)
    with jobs.engine.connect() as conn:
        assert report.events == conn.execute(select(func.count()).select_from(events)).scalar_one()
    assert tables(jobs.engine) == live


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Makes an empty database with the log and the read models each time it is called."""
    admin: Engine | None = (
        request.getfixturevalue("postgres_admin") if request.param == "postgresql" else None
    )
    made: list[Engine] = []
    schemas: list[str] = []

    def make() -> Engine:
        if admin is None:
            url = default_event_store_url(tmp_path / f"db-{len(made)}")
        else:
            schemas.append(f"capsule_test_{secrets.token_hex(6)}")
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schemas[-1]}")
            # Commits here need not survive a crash of the server: not waiting for each to reach
            # the disk changes nothing another session reads, and was most of the waiting.
            options = {"options": f"-csearch_path={schemas[-1]} -csynchronous_commit=off"}
            url = admin.url.update_query_dict(options).render_as_string(hide_password=False)
        engine = make_engine(url)
        made.append(engine)
        create_schema(engine)
        projections.create_projection_schema(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()
    if admin is not None:
        with admin.begin() as conn:
            for schema in schemas:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@dataclass(frozen=True)
class Move:
    """One command's worth of random choices about a job in `state`."""

    job_type: JobType
    state: JobState
    kind: str
    flag: bool
    done: int
    now: datetime

    def next(self) -> Any:
        """What the orchestrator would send; None once the job has finished."""
        match next_action(self.state, self.now):
            case RunStep(step=step, attempt=attempt) | WaitUntil(reason="retry", step=step, attempt=attempt):
                return self.step_command("start", step, attempt)
            case WaitUntil(reason="lease", step=step, attempt=attempt):
                chosen = self.kind if self.kind in ("progress", "complete", "fail") else "progress"
                return self.step_command(chosen, step, attempt)
            case ExpireStepLease(step=step, attempt=attempt):
                return self.step_command("expire", step, attempt)
            case WaitForJob():
                return ReleaseBackup(job_id=self.state.job_id, now=self.now)
            case Finished():
                return None
        raise AssertionError("next_action gave something unknown")

    def step_command(self, kind: str, step: str, attempt: int) -> Any:
        common: dict[str, Any] = {
            "job_id": self.state.job_id,
            "now": self.now,
            "step": step,
            "attempt": attempt,
        }
        match kind:
            case "start":
                return StartStep(**common, worker="w1" if self.flag else "w2", lease=LEASE)
            case "progress":
                total = None if self.flag else 100
                return RecordProgress(
                    **common, done=self.done, total=total, detail={"n": self.done}, lease=LEASE
                )
            case "complete":
                return CompleteStep(**common, result=self.result(step, attempt))
            case "fail":
                return FailStep(**common, error=f"failed {self.done}", transient=self.flag, policy=POLICY)
            case "expire":
                return ExpireLease(**common, policy=POLICY)
            case _:
                return None

    def result(self, step: str, attempt: int) -> dict[str, Any]:
        """What a step reports, with odd figures now and then."""
        if step == backup_job.COMMIT:
            totals = TOTALS if self.flag else {"files": "n/a", "bytes": self.done}
            return {"snapshot_id": f"snap-{self.state.job_id}-{attempt}", "totals": totals}
        if self.job_type == "restore":
            return {
                "safety_copy": f"/safety/{self.state.job_id}.db",
                "files": self.done,
                "bytes": self.done * 7,
            }
        return {"stored": {"blobs": self.done}}


class Histories(RuleBasedStateMachine):
    """Jobs of both kinds, moved by commands at random times; the rows must follow, live and rebuilt."""

    new_engine: ClassVar[Callable[[], Engine]]

    def __init__(self) -> None:
        super().__init__()
        self.jobs = Jobs(type(self).new_engine())
        self.states: dict[str, tuple[JobType, JobState]] = {}
        self.sent = self.rebuilt_after = 0

    def _send(self, job_type: JobType, command: Any) -> None:
        self.sent += 1
        with suppress(InvalidCommand):
            self.jobs.send(job_type, command)
        self.states[command.job_id] = (job_type, self.jobs.state(job_type, command.job_id))

    @precondition(lambda self: len(self.states) < MAX_JOBS)
    @rule(source=st.sampled_from(SOURCES))
    def request_backup(self, source: str) -> None:
        job_id = f"b{len(self.states)}"
        self.jobs.request_backup(job_id, source=source)
        self.states[job_id] = ("backup", self.jobs.state("backup", job_id))

    @precondition(lambda self: len(self.states) < MAX_JOBS)
    @rule(into=st.sampled_from(TARGETS), snapshot=st.sampled_from(["snap-1", "snap-2"]))
    def request_restore(self, into: str, snapshot: str) -> None:
        job_id = f"r{len(self.states)}"
        self.jobs.request_restore(job_id, snapshot, into)
        self.states[job_id] = ("restore", self.jobs.state("restore", job_id))

    @rule(seconds=st.sampled_from([1, 3, 20, 61, 300]))
    def wait(self, seconds: int) -> None:
        self.jobs.clock.tick(seconds)

    @precondition(lambda self: self.states)
    @rule(
        pick=st.integers(0, 1000),
        kind=st.sampled_from(KINDS),
        follow=st.integers(0, 3),
        flag=st.booleans(),
        done=st.integers(0, 100) | st.just(2**70),
    )
    def act(self, pick: int, kind: str, follow: int, flag: bool, done: int) -> None:
        """Mostly what the orchestrator would do next; otherwise a command of `kind` on the open step."""
        job_id = sorted(self.states)[pick % len(self.states)]
        job_type, state = self.states[job_id]
        move = Move(job_type, state, kind, flag, done, self.jobs.clock.tick())
        if follow:
            command = move.next()
        else:
            step = current_step(state) or state.steps[-1]
            attempt = step.attempt + 1 if kind == "start" else max(step.attempt, 1)
            command = move.step_command(kind, step.name, attempt)
        self._send(job_type, command or CancelJob(job_id=job_id, now=move.now))

    @precondition(lambda self: self.states)
    @rule(pick=st.integers(0, 1000), moves=st.integers(1, 12), seed=st.integers(0, 2**32))
    def run_for_a_while(self, pick: int, moves: int, seed: int) -> None:
        """The orchestrator's lead for several moves on one job, with seconds passing and attempts failing."""
        job_id = sorted(self.states)[pick % len(self.states)]
        chance = random.Random(seed)
        for _ in range(moves):
            job_type, state = self.states[job_id]
            kind = chance.choice(["progress", "progress", "complete", "complete", "fail"])
            now = self.jobs.clock.tick(chance.choice([1, 2, 30, 61]))
            command = Move(job_type, state, kind, chance.random() < 0.7, chance.randrange(100), now).next()
            if command is None:
                return
            self._send(job_type, command)

    @rule(
        snapshot=st.sampled_from(["snap-1", "snap-2", "snap-3"]),
        tags=st.lists(st.sampled_from(["keep", "audit"]), max_size=2, unique=True),
        forget=st.booleans(),
    )
    def mark_snapshot(self, snapshot: str, tags: list[str], forget: bool) -> None:
        """What `capsule tag` and `capsule forget` append: a snapshot's stream, at the version read."""
        stream = codec.snapshot_stream_id(snapshot)
        version = self.jobs.store.stream_version(stream)
        now = self.jobs.clock.tick(1)
        event: Event = (
            SnapshotForgotten(
                job_id=f"f{self.sent}",
                snapshot_id=snapshot,
                kind="database",
                time=now,
                reason="by hand",
                policy=None,
                rule=None,
            )
            if forget
            else SnapshotTagsChanged(
                job_id=f"t{self.sent}",
                snapshot_id=snapshot,
                added=tuple(tags),
                removed=("audit",) * (not tags),
            )
        )
        self.sent += 1
        meta = Metadata(actor="person:ana", correlation_id=event.job_id)
        self.jobs.store.append(stream, version, [codec.encode(event)], meta, handlers=[self.jobs.handler])

    @rule()
    def release_queued(self) -> None:
        """What the runtime does once a backup finishes: let the backups queued behind it start."""
        for job_id, (job_type, state) in sorted(self.states.items()):
            if job_type == "backup" and is_finished(state):
                for waiting in projections.jobs_queued_behind(self.jobs.engine, job_id):
                    self._send("backup", ReleaseBackup(job_id=waiting, now=self.jobs.clock()))

    @precondition(lambda self: self.sent >= self.rebuilt_after + 20)
    @rule()
    def rebuild(self) -> None:
        """Now and then in the middle, so that live appends go on from rebuilt rows."""
        assert_replay_rebuilds_what_is_live(self.jobs)
        self.rebuilt_after = self.sent

    @invariant()
    def rows_follow_the_domain(self) -> None:
        rows = {r["job_id"]: r for r in projections.list_jobs(self.jobs.engine, limit=10_000)}
        assert set(rows) == set(self.states)
        for job_id, (job_type, state) in self.states.items():
            step = current_step(state)
            row = rows[job_id]
            assert (row["job_type"], row["status"], row["queued_behind"]) == (
                job_type,
                state.status,
                state.queued_behind,
            )
            assert row["current_step"] == (step.name if step else None)
            assert (row["finished_at"] is not None) == is_finished(state)
        unfinished = {job_id for job_id, (_, state) in self.states.items() if not is_finished(state)}
        assert {job_id for job_id, _ in projections.unfinished_jobs(self.jobs.engine)} == unfinished

    def teardown(self) -> None:
        try:
            assert_replay_rebuilds_what_is_live(self.jobs)
        finally:
            self.jobs.engine.dispose()


def test_random_histories_rebuild_to_the_rows_written_live(new_database: Callable[[], Engine]):
    Histories.new_engine = staticmethod(new_database)
    run_state_machine_as_test(
        Histories,
        settings=settings(
            max_examples=12,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_several_processes_rebuild_the_rows_one_process_does(new_database: Callable[[], Engine]):
    jobs = Jobs(new_database())
    for n in range(12):
        queued = any(isinstance(e, BackupQueued) for e in jobs.request_backup(f"b{n}", source=SOURCES[n % 2]))
        if n % 4 != 3 and not queued:
            jobs.complete_backup(f"b{n}", f"snap-{n}")
        jobs.request_restore(f"r{n}", f"snap-{n}", TARGETS[n % 2])
        if n % 3 == 0:
            jobs.run(
                "restore", f"r{n}", *restore_job.plan_for(TARGETS[n % 2])[:1], safety_copy="/safety/x.db"
            )
    # The log never holds this from the deciders, but it may from elsewhere: an event for a job that
    # has finished, whose state replay lets go of and must read back.
    late = StepProgressed(
        job_id="b0", step="commit", attempt=1, done=1, total=1, detail={}, lease_expires_at=jobs.clock()
    )
    version = jobs.store.stream_version("backup-b0")
    jobs.store.append(
        "backup-b0", version, [codec.encode(late)], Metadata("w", "x"), handlers=[ProjectionHandler()]
    )
    live = tables(jobs.engine)

    projections.replay(jobs.engine, jobs.store, workers=3)
    assert tables(jobs.engine) == live
    assert_replay_rebuilds_what_is_live(jobs, workers=1)


def test_replaying_an_empty_log_leaves_empty_read_models(new_database: Callable[[], Engine]):
    jobs = Jobs(new_database())

    assert projections.replay(jobs.engine, jobs.store).events == 0
    assert tables(jobs.engine) == {
        "jobs": [],
        "snapshots": [],
        "restore_jobs": [],
        "backup_settings": [],
        "schedule_runs": [],
        "drill_proofs": [],
        "snapshot_marks": [],
        "backup_dest_objects": [],
        "projection_checkpoints": sorted(
            ({"name": t.name, "position": 0} for t in PROJECTIONS), key=lambda r: str(r["name"])
        ),
    }


def test_the_fast_reader_gives_the_events_the_store_gives(new_database: Callable[[], Engine]):
    upcasters = Upcasters()
    upcasters.register("Noted", 1, lambda data: {**data, "v": 2})
    jobs = Jobs(new_database())
    jobs.request_backup("b1")
    jobs.complete_backup("b1", "snap-1")
    jobs.store.append("notes", 0, [NewEvent("Noted", 1, {"n": 1})], Metadata("a", "c", "m"))
    store = EventStore(jobs.engine, upcasters=upcasters)
    store.append("notes", 1, [NewEvent("Noted", 2, {"n": 2, "v": 2})], Metadata("a", "c"))

    with jobs.engine.connect() as conn:
        scan = Scan(conn, upcasters)
        scanned = [e for page in scan.pages(store.last_position(), 4) for e in page]
        assert scanned == store.read_all(limit=100, conn=conn)
        assert scan.rows_read == len(scanned)
        only_jobs = Scan(conn, upcasters, keep=lambda stream: stream.startswith("backup-"))
        kept = [e for page in only_jobs.pages(10**9, 3) for e in page]
        assert kept == store.read_stream("backup-b1", conn=conn)
        assert only_jobs.rows_read == len(scanned)


def test_read_models_of_an_older_shape_are_dropped_and_rebuilt_from_the_log(
    new_database: Callable[[], Engine],
):
    jobs = Jobs(new_database())
    uploads = "/srv/pos/uploads/products"
    jobs.request_backup("b1", source=uploads, kind="files")
    jobs.run("backup", "b1", backup_job.STORE, warnings={"count": 2, "items": ["a: skipped", "b: kept"]})
    jobs.run(
        "backup", "b1", backup_job.COMMIT, snapshot_id="snap-1", kind="files", source=uploads, totals=TOTALS
    )
    live = tables(jobs.engine)
    assert [r["warnings"] for r in live["jobs"]] == [2]
    # The `jobs` table as a Capsule from before warnings made it.
    with jobs.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE jobs DROP COLUMN warnings")

    projections.create_projection_schema(jobs.engine)

    with jobs.engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
        assert projections.checkpoints(conn) == {t.name: 0 for t in PROJECTIONS}
    assert "warnings" in columns
    assert {name: rows for name, rows in tables(jobs.engine).items() if name != "projection_checkpoints"} == {
        "jobs": [],
        "snapshots": [],
        "restore_jobs": [],
        "backup_settings": [],
        "schedule_runs": [],
        "drill_proofs": [],
        "snapshot_marks": [],
        "backup_dest_objects": [],
    }

    # The next append through the handler catches every read model up from the start of the log.
    jobs.clock.tick()
    jobs.request_backup("b2")
    caught_up = tables(jobs.engine)
    assert [(r["job_id"], r["warnings"]) for r in caught_up["jobs"]] == [("b1", 2), ("b2", None)]
    assert caught_up["snapshots"] == live["snapshots"]
    projections.create_projection_schema(jobs.engine)  # the shape is current now: nothing is dropped
    assert tables(jobs.engine) == caught_up
    assert_replay_rebuilds_what_is_live(jobs)


def test_snapshots_a_repaired_log_recovered_are_rebuilt_by_one_process_or_several(
    new_database: Callable[[], Engine],
):
    jobs = Jobs(new_database())
    jobs.request_backup("b0", source=SOURCES[0])
    jobs.complete_backup("b0", "snap-new")
    repair = "20261206000000-0a1b2c3d"
    recovered = [
        SnapshotRecovered(
            job_id=repair,
            snapshot_id=f"snap-old-{n}",
            kind="database",
            source=SOURCES[n % 2],
            time=jobs.clock(),
            made_by_job=None if n == 0 else f"job-{n}",
            totals={"files": 1, "bytes": 4096 * n, "duration_seconds": 0.25},
        )
        for n in range(3)
    ]
    started = EventLogStarted(
        job_id=repair, damaged_log="events.db", set_aside_as=("x",), reason="malformed", detected_by="x"
    )
    jobs.store.append(
        codec.log_stream_id(repair),
        0,
        [codec.encode(e) for e in (started, *recovered)],
        Metadata("person:ana@till", repair),
        handlers=[ProjectionHandler()],
    )
    live = tables(jobs.engine)
    rows = {r["snapshot_id"]: r for r in live["snapshots"]}
    assert set(rows) == {"snap-new", "snap-old-0", "snap-old-1", "snap-old-2"}
    assert rows["snap-old-0"]["job_id"] == repair and rows["snap-old-2"]["job_id"] == "job-2"
    assert rows["snap-old-2"]["bytes"] == 8192 and rows["snap-old-1"]["duration_seconds"] == 0.25

    projections.replay(jobs.engine, jobs.store, workers=3)
    assert tables(jobs.engine) == live
    assert_replay_rebuilds_what_is_live(jobs, workers=1)
