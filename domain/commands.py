"""Commands: what someone asks of a job, in the imperative. Each has one handler, a decider.

Every command carries the job it is for and `now`, the time the caller read from its clock, so the
deciders never read one. Messages are delivered at least once: a command that repeats what the log
already holds decides no events, and the deciders say so by returning an empty list.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator

from capsule.domain.errors import Category
from capsule.domain.events import BackupKind, JsonObject, UtcDatetime

DEFAULT_LEASE = timedelta(minutes=5)
"""How long a worker holds a step without reporting before another may take it over."""


class RetryPolicy(BaseModel):
    """How often a step is tried and how long to wait between tries: exponential backoff, capped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=5, ge=1)
    base_backoff: timedelta = Field(default=timedelta(seconds=2), gt=timedelta(0))
    max_backoff: timedelta = Field(default=timedelta(seconds=60), gt=timedelta(0))

    @model_validator(mode="after")
    def _cap_is_not_below_base(self) -> RetryPolicy:
        if self.max_backoff < self.base_backoff:
            raise ValueError("max_backoff must not be shorter than base_backoff")
        return self

    def backoff(self, attempt: int) -> timedelta:
        """How long to wait after attempt number `attempt` (1 for the first) failed."""
        # The exponent is clamped first so a large attempt number cannot overflow timedelta.
        factor = 1 << min(max(attempt - 1, 0), 30)
        return min(self.base_backoff * factor, self.max_backoff)

    def allows_another_after(self, attempt: int) -> bool:
        """Whether a step whose attempt number `attempt` ended without success may be tried again."""
        return attempt < self.max_attempts


class Command(BaseModel):
    """Something asked of a job at time `now`; the base of every command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(min_length=1)
    now: UtcDatetime


class RequestBackup(Command):
    """Ask for a backup of `source`; `active_job_id` names a running backup of the same source."""

    kind: BackupKind = "database"
    source: str = Field(min_length=1)
    full: bool = False
    tags: tuple[str, ...] = ()
    active_job_id: str | None = None
    destinations: tuple[str, ...] = ()
    """The destinations enabled (and not paused) now: each gets an `upload:<name>` step."""


class ReleaseBackup(Command):
    """Let a queued backup start its steps, because the backup it waited for has finished."""


class RequestRestore(Command):
    """Ask for a restore of `snapshot_id` into a directory, or into the live database (`in-place`)."""

    snapshot_id: str = Field(min_length=1)
    target: str = Field(min_length=1)
    force: bool = False
    check: bool = False
    include: tuple[str, ...] = ()
    from_other_source: bool = False
    """The owner knows the snapshot is of another database and means it to replace the live one."""
    special_bits: bool = False
    source: str | None = None
    """A copy to restore from (a destination's name, a folder's path); None: the local repository."""


class RequestDrill(Command):
    """Ask for a restore drill of the newest snapshots of the database and the images folder."""

    database_source: str = Field(min_length=1)
    files_source: str = Field(min_length=1)
    sample_files: int = Field(default=20, ge=1)
    sample_percent: float = Field(default=2.0, ge=0, le=100)


class RequestPrune(Command):
    """Ask for a prune of the repository; `active_job_id` names a prune that has not finished yet,
    which the request then joins instead of starting a second one."""

    repack_unused_percent: int = Field(default=10, ge=0, le=100)
    active_job_id: str | None = None


class StartStep(Command):
    """Record that `worker` takes attempt number `attempt` of `step`, holding it for `lease`."""

    step: str
    attempt: int = Field(ge=1)
    worker: str = Field(min_length=1)
    lease: timedelta = Field(default=DEFAULT_LEASE, gt=timedelta(0))


class RecordProgress(Command):
    """Record how far a running attempt has got; this heartbeat also extends its lease by `lease`."""

    step: str
    attempt: int = Field(ge=1)
    done: int = Field(ge=0)
    total: int | None = Field(default=None, ge=0)
    detail: JsonObject = Field(default_factory=dict)
    lease: timedelta = Field(default=DEFAULT_LEASE, gt=timedelta(0))


class CompleteStep(Command):
    """Record that a running attempt finished its step with `result`."""

    step: str
    attempt: int = Field(ge=1)
    result: JsonObject = Field(default_factory=dict)


class FailStep(Command):
    """Record that a running attempt failed; `transient` errors are retried under `policy`."""

    step: str
    attempt: int = Field(ge=1)
    error: str = Field(min_length=1)
    transient: bool
    policy: RetryPolicy = Field(default_factory=RetryPolicy)
    category: Category = Category.UNKNOWN


class ExpireLease(Command):
    """Declare a running attempt lost if its lease ran out by `now`; retries count under `policy`."""

    step: str
    attempt: int = Field(ge=1)
    policy: RetryPolicy = Field(default_factory=RetryPolicy)


class InterruptStep(Command):
    """Record that a running attempt was stopped on purpose or lost with its process (Ctrl-C,
    SIGTERM, a process found dead on its own host): the next attempt may start at once, without
    waiting for the lease to run out, and an interruption is not a failure."""

    step: str
    attempt: int = Field(ge=1)
    reason: str = Field(min_length=1)


class PauseStep(Command):
    """Record that the job was stopped on purpose (Ctrl-C, SIGTERM) while no attempt of its current
    step `step` ran: between two steps, or before a retry. `attempt` is the step's latest attempt
    (0 before its first). The job reads as interrupted, as it does when a running attempt is
    stopped (`InterruptStep`), and the next attempt may start at once."""

    step: str
    attempt: int = Field(ge=0)
    reason: str = Field(min_length=1)


class CancelJob(Command):
    """Stop a job that has not finished; nothing more of it will run."""


StepCommand = StartStep | RecordProgress | CompleteStep | FailStep | ExpireLease | InterruptStep | PauseStep
"""The commands about a job's steps, the same for every kind of job."""
