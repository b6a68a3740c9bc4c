"""The restore job aggregate: one stream `restore-<job_id>`, decided and evolved here.

A restore into a directory runs one step, `restore` (fetch, verify, write). A restore into the live
database (target `in-place`) runs `stage` (fetch, verify and check a copy next to it) and then
`apply` (save the live database aside, copy the staged one in through SQLite's backup API), so a
failure while staging never touches what the shop is selling from.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

from capsule.domain.commands import CancelJob, RequestRestore
from capsule.domain.errors import InvalidCommand, InvalidEvent
from capsule.domain.events import (
    Event,
    JsonObject,
    RestoreCancelled,
    RestoreCompleted,
    RestoreFailed,
    RestoreRequested,
)
from capsule.domain.jobs import JobCommand, JobRules, JobState, StepState, decide_job, evolve_job, update_job

STREAM_PREFIX = "restore-"

IN_PLACE = "in-place"
"""The target that means the live database; a directory of that name is written `./in-place`."""

RESTORE = "restore"
STAGE = "stage"
APPLY = "apply"


def stream_id(job_id: str) -> str:
    """The id of the event stream that holds restore job `job_id`."""
    return f"{STREAM_PREFIX}{job_id}"


def plan_for(target: str) -> tuple[str, ...]:
    """The ordered steps a restore into `target` runs."""
    return (STAGE, APPLY) if target == IN_PLACE else (RESTORE,)


class RestoreJob(JobState):
    """A restore job as its log tells it."""

    snapshot_id: str = ""
    target: str = ""
    force: bool = False
    check: bool = False
    include: tuple[str, ...] = ()
    from_other_source: bool = False
    special_bits: bool = False
    source: str | None = None
    result: JsonObject | None = None

    @property
    def in_place(self) -> bool:
        return self.target == IN_PLACE


RestoreCommand = RequestRestore | JobCommand


def initial_state() -> RestoreJob:
    """A restore job before anything was recorded."""
    return RestoreJob()


def _completed(state: RestoreJob) -> Event:
    return RestoreCompleted(job_id=state.job_id, result=state.steps[-1].result or {})


RULES: JobRules[RestoreJob] = JobRules(
    noun="restore", completed=_completed, failed=RestoreFailed, cancelled=RestoreCancelled
)


def decide(state: RestoreJob, command: RestoreCommand) -> list[Event]:
    """The events `command` records on the restore job in `state`; [] if it repeats what is recorded."""
    match command:
        case RequestRestore():
            return _request(state, command)
        case CancelJob():
            apply = state.find_step(APPLY)
            if apply is not None and apply.status == "running" and state.status == "running":
                raise InvalidCommand(
                    f"restore job {state.job_id!r} is replacing the live database right now; "
                    "let it finish, then restore the copy it saved aside if you want the old data back"
                )
            return decide_job(state, command, RULES)
        case _:
            return decide_job(state, command, RULES)


def _request(state: RestoreJob, c: RequestRestore) -> list[Event]:
    if c.include and c.target == IN_PLACE:
        raise InvalidCommand("--include picks files to restore into a folder; the live database is whole")
    if c.special_bits and c.target == IN_PLACE:
        raise InvalidCommand(
            "--special-bits gives restored files their setuid and setgid bits; the live database "
            "keeps its own mode: restore into a folder with --to, or leave the option out"
        )
    # The live database is about to be replaced: SQLite's own check always runs for an in-place restore.
    check = c.check or c.target == IN_PLACE
    if state.status is not None:
        if c.job_id != state.job_id:
            raise InvalidCommand(f"a request for job {c.job_id!r} was sent to restore job {state.job_id!r}")
        recorded = (state.snapshot_id, state.target, state.force, state.check, state.include)
        if (*recorded, state.from_other_source, state.special_bits, state.source) != (
            c.snapshot_id,
            c.target,
            c.force,
            check,
            c.include,
            c.from_other_source,
            c.special_bits,
            c.source,
        ):
            raise InvalidCommand(
                f"restore job {c.job_id!r} was already requested with other settings; use a new job id"
            )
        return []
    return [
        RestoreRequested(
            job_id=c.job_id,
            snapshot_id=c.snapshot_id,
            target=c.target,
            force=c.force,
            check=check,
            include=c.include,
            from_other_source=c.from_other_source,
            plan=plan_for(c.target),
            special_bits=c.special_bits,
            source=c.source,
        )
    ]


def evolve(state: RestoreJob, event: Event) -> RestoreJob:
    """The restore job once `event` has happened to it."""
    match event:
        case RestoreRequested():
            if state.status is not None:
                raise InvalidEvent(f"restore job {event.job_id!r} was requested twice in its log")
            return RestoreJob(
                job_id=event.job_id,
                status="pending",
                steps=tuple(StepState(name=name) for name in event.plan),
                snapshot_id=event.snapshot_id,
                target=event.target,
                force=event.force,
                check=event.check,
                include=event.include,
                from_other_source=event.from_other_source,
                special_bits=event.special_bits,
                source=event.source,
            )
        case RestoreCompleted():
            return update_job(state, event, status="completed", result=event.result)
        case _:
            return evolve_job(state, event, RULES)


def replay(events: Iterable[Event]) -> RestoreJob:
    """The restore job its log describes: every event applied in order to the initial state."""
    return reduce(evolve, events, initial_state())
