"""The restore drill aggregate: one stream `drill-<job_id>`, decided and evolved here.

A drill proves that the backups restore, which a backup alone never shows. It runs two steps:
`prove:database` restores the newest snapshot of the shop's database into a scratch folder,
verified as a restore is, and runs SQLite's `integrity_check` and `foreign_key_check` on the copy;
`prove:files` restores a random sample of the newest images snapshot and checks each image against
its manifest. Each step deletes its copy before it ends. A step's result names the snapshot it
proved, so a snapshot proven stays proven even when the other step then fails.

A drill with nothing to prove (no snapshot of a kind yet) fails: a drill that proved nothing must
never read as "the backups restore".
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

from capsule.domain.commands import CompleteStep, RequestDrill
from capsule.domain.errors import InvalidCommand, InvalidEvent
from capsule.domain.events import (
    DrillCancelled,
    DrillCompleted,
    DrillFailed,
    DrillRequested,
    Event,
    JsonObject,
)
from capsule.domain.jobs import JobCommand, JobRules, JobState, StepState, decide_job, evolve_job, update_job

STREAM_PREFIX = "drill-"

PROVE_DATABASE = "prove:database"
PROVE_FILES = "prove:files"
PLAN = (PROVE_DATABASE, PROVE_FILES)


def stream_id(job_id: str) -> str:
    """The id of the event stream that holds drill job `job_id`."""
    return f"{STREAM_PREFIX}{job_id}"


def kind_of(step: str) -> str:
    """The snapshot kind a step proves: `database` or `files`."""
    return step.partition(":")[2]


class DrillJob(JobState):
    """A restore drill as its log tells it."""

    database_source: str = ""
    files_source: str = ""
    sample_files: int = 0
    sample_percent: float = 0.0
    outcome: DrillCompleted | None = None

    @property
    def sources(self) -> tuple[str, str]:
        return self.database_source, self.files_source


DrillCommand = RequestDrill | JobCommand


def initial_state() -> DrillJob:
    """A drill before anything was recorded."""
    return DrillJob()


def proven(state: DrillJob) -> dict[str, JsonObject]:
    """The results of the steps that completed, by snapshot kind: each names the snapshot it proved."""
    return {kind_of(s.name): dict(s.result) for s in state.steps if s.status == "completed" and s.result}


def _int(result: JsonObject, key: str) -> int:
    value = result.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(result: JsonObject, key: str, default: str = "") -> str:
    value = result.get(key)
    return value if isinstance(value, str) else default


def _completed(state: DrillJob) -> Event:
    by_kind = proven(state)
    database, files = by_kind.get("database", {}), by_kind.get("files", {})
    seconds = sum(
        float(v) for r in (database, files) if isinstance(v := r.get("seconds"), int | float) and v >= 0
    )
    return DrillCompleted(
        job_id=state.job_id,
        database_snapshot_id=_text(database, "snapshot_id"),
        files_snapshot_id=_text(files, "snapshot_id"),
        integrity_check=_text(database, "integrity_check", "not run"),
        foreign_key_check=_text(database, "foreign_key_check", "not run"),
        images_total=_int(files, "images_total"),
        images_sampled=_int(files, "images_sampled"),
        images_checked=_int(files, "images_checked"),
        bytes=_int(database, "bytes") + _int(files, "bytes"),
        seconds=round(seconds, 3),
    )


RULES: JobRules[DrillJob] = JobRules(
    noun="drill", completed=_completed, failed=DrillFailed, cancelled=DrillCancelled
)


def decide(state: DrillJob, command: DrillCommand) -> list[Event]:
    """The events `command` records on the drill in `state`; [] if it repeats what is recorded."""
    match command:
        case RequestDrill():
            return _request(state, command)
        case CompleteStep() if command.step in PLAN:
            snapshot_id = command.result.get("snapshot_id")
            if not isinstance(snapshot_id, str) or not snapshot_id:
                raise InvalidCommand(f"the result of step {command.step!r} must name the snapshot it proved")
            return decide_job(state, command, RULES)
        case _:
            return decide_job(state, command, RULES)


def _request(state: DrillJob, c: RequestDrill) -> list[Event]:
    asked = (c.database_source, c.files_source, c.sample_files, c.sample_percent)
    if state.status is not None:
        if c.job_id != state.job_id:
            raise InvalidCommand(f"a request for job {c.job_id!r} was sent to drill job {state.job_id!r}")
        if (state.database_source, state.files_source, state.sample_files, state.sample_percent) != asked:
            raise InvalidCommand(
                f"drill job {c.job_id!r} was already requested with other settings; use a new job id"
            )
        return []
    return [
        DrillRequested(
            job_id=c.job_id,
            database_source=c.database_source,
            files_source=c.files_source,
            sample_files=c.sample_files,
            sample_percent=c.sample_percent,
            plan=PLAN,
        )
    ]


def evolve(state: DrillJob, event: Event) -> DrillJob:
    """The drill once `event` has happened to it."""
    match event:
        case DrillRequested():
            if state.status is not None:
                raise InvalidEvent(f"drill job {event.job_id!r} was requested twice in its log")
            return DrillJob(
                job_id=event.job_id,
                status="pending",
                steps=tuple(StepState(name=name) for name in event.plan),
                database_source=event.database_source,
                files_source=event.files_source,
                sample_files=event.sample_files,
                sample_percent=event.sample_percent,
            )
        case DrillCompleted():
            return update_job(state, event, status="completed", outcome=event)
        case _:
            return evolve_job(state, event, RULES)


def replay(events: Iterable[Event]) -> DrillJob:
    """The drill its log describes: every event applied in order to the initial state."""
    return reduce(evolve, events, initial_state())
