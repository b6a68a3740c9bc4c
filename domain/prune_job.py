"""The prune aggregate: one stream `prune-<job_id>`, decided and evolved here.

A prune gives back the space of data that no snapshot uses any more (after snapshots were
forgotten). It runs five steps, each one's result kept in its StepCompleted:
`plan` reads the snapshots and the index and lists the packs to delete and to repack (a pack with
at least `repack_unused_percent` of its bytes unused has its used blobs copied out first);
`repack` copies those blobs into new packs; `index` writes index files without the packs to go;
`wait` is the grace period: it ends once every backup that may have read the old index has
finished and every lock holder seen when it began is gone; `delete` then deletes the packs, except
those a backup came to use meanwhile (rescued).

Only one prune is unfinished at a time: a request while one is (`RequestPrune.active_job_id`,
found in the same transaction as the append) records nothing, and the caller joins that prune.
Backups never wait for a prune: the prune waits for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import reduce

from capsule.domain.commands import CompleteStep, RequestPrune
from capsule.domain.errors import InvalidCommand, InvalidEvent
from capsule.domain.events import (
    Event,
    JsonObject,
    PruneCancelled,
    PruneCompleted,
    PruneFailed,
    PruneRequested,
)
from capsule.domain.jobs import JobCommand, JobRules, JobState, StepState, decide_job, evolve_job, update_job

STREAM_PREFIX = "prune-"

PLAN_STEP = "plan"
REPACK = "repack"
INDEX = "index"
WAIT = "wait"
DELETE = "delete"
PLAN = (PLAN_STEP, REPACK, INDEX, WAIT, DELETE)

DEFAULT_REPACK_UNUSED_PERCENT = 10
"""The share of a pack's bytes that must be unused before its used blobs are copied out and it
goes, when the settings say nothing (`retention.repack-unused-percent`)."""

_REQUIRED: dict[str, tuple[str, ...]] = {
    PLAN_STEP: ("bytes_before", "unused_bytes"),
    REPACK: ("packs_repacked", "bytes_written"),
    DELETE: ("packs_deleted", "bytes_deleted", "bytes_after"),
}
"""The figures a step's result must carry: the completion and the status are made of them."""


def stream_id(job_id: str) -> str:
    """The id of the event stream that holds prune job `job_id`."""
    return f"{STREAM_PREFIX}{job_id}"


def is_store_step(step: str) -> bool:
    """Whether a backup step writes packs and may refer to packs a prune deletes (`store`, `store:*`)."""
    return step == "store" or step.startswith("store:")


def still_to_wait_for(
    index_completed_at: int, store_started_at: Mapping[str, int], finished: Iterable[str]
) -> list[str]:
    """The backup jobs the grace period still waits for, sorted: those whose store step started
    (the global position of its first StepStarted) before the prune's new index was recorded
    (position `index_completed_at`) and that have not finished. A backup whose store step started
    later read the new index and never refers to a pack the prune deletes."""
    done = set(finished)
    return sorted(
        job for job, position in store_started_at.items() if position < index_completed_at and job not in done
    )


class PruneJob(JobState):
    """A prune as its log tells it."""

    repack_unused_percent: int = DEFAULT_REPACK_UNUSED_PERCENT
    outcome: PruneCompleted | None = None


PruneCommand = RequestPrune | JobCommand


def initial_state() -> PruneJob:
    """A prune before anything was recorded."""
    return PruneJob()


def results(state: PruneJob) -> dict[str, JsonObject]:
    """The results of the steps that completed, by step name."""
    return {s.name: dict(s.result) for s in state.steps if s.status == "completed" and s.result is not None}


def _int(result: JsonObject, key: str) -> int:
    value = result.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _completed(state: PruneJob) -> Event:
    done = results(state)
    planned, repacked, deleted = done.get(PLAN_STEP, {}), done.get(REPACK, {}), done.get(DELETE, {})
    seconds = sum(
        float(v) for r in done.values() if isinstance(v := r.get("seconds"), int | float) and v >= 0
    )
    removed, written = _int(deleted, "bytes_deleted"), _int(repacked, "bytes_written")
    return PruneCompleted(
        job_id=state.job_id,
        bytes_before=_int(planned, "bytes_before"),
        bytes_after=_int(deleted, "bytes_after"),
        bytes_deleted=removed,
        bytes_written=written,
        bytes_freed=max(removed - written, 0),
        packs_deleted=_int(deleted, "packs_deleted"),
        packs_repacked=_int(repacked, "packs_repacked"),
        packs_rescued=_int(deleted, "packs_rescued"),
        seconds=round(seconds, 3),
    )


RULES: JobRules[PruneJob] = JobRules(
    noun="prune", completed=_completed, failed=PruneFailed, cancelled=PruneCancelled
)


def decide(state: PruneJob, command: PruneCommand) -> list[Event]:
    """The events `command` records on the prune in `state`; [] if it repeats what is recorded or
    joins a prune that has not finished."""
    match command:
        case RequestPrune():
            return _request(state, command)
        case CompleteStep() if command.step in _REQUIRED:
            missing = [k for k in _REQUIRED[command.step] if not _is_count(command.result.get(k))]
            if missing:
                raise InvalidCommand(
                    f"the result of prune step {command.step!r} must give {', '.join(missing)} "
                    "as whole numbers of 0 or more"
                )
            return decide_job(state, command, RULES)
        case _:
            return decide_job(state, command, RULES)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _request(state: PruneJob, c: RequestPrune) -> list[Event]:
    if state.status is not None:
        if c.job_id != state.job_id:
            raise InvalidCommand(f"a request for job {c.job_id!r} was sent to prune job {state.job_id!r}")
        return []
    if c.active_job_id is not None:
        return []  # the caller joins the prune that has not finished: one at a time
    return [PruneRequested(job_id=c.job_id, repack_unused_percent=c.repack_unused_percent, plan=PLAN)]


def evolve(state: PruneJob, event: Event) -> PruneJob:
    """The prune once `event` has happened to it."""
    match event:
        case PruneRequested():
            if state.status is not None:
                raise InvalidEvent(f"prune job {event.job_id!r} was requested twice in its log")
            return PruneJob(
                job_id=event.job_id,
                status="pending",
                steps=tuple(StepState(name=name) for name in event.plan),
                repack_unused_percent=event.repack_unused_percent,
            )
        case PruneCompleted():
            return update_job(state, event, status="completed", outcome=event)
        case _:
            return evolve_job(state, event, RULES)


def replay(events: Iterable[Event]) -> PruneJob:
    """The prune its log describes: every event applied in order to the initial state."""
    return reduce(evolve, events, initial_state())
