"""The job commands of the CLI: jobs, status, cancel, audit, replay, repair-log and worker.

`capsule.api.cli` registers them on the `capsule` group; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import render
from capsule.api.common import Context, pass_ctx, run
from capsule.api.filters import since as parse_since
from capsule.orchestrator.usecases.jobs import (
    Audit,
    Cancel,
    ListJobs,
    Work,
    audit_events,
    cancel_job,
    current_status,
    list_jobs,
    repair_event_log,
    replay_log,
    verify_log,
    work,
)

# Spelled out, not read from the domain, so that the CLI starts without loading the events.
JOB_STATUSES = (
    "queued",
    "pending",
    "running",
    "retrying",
    "interrupted",
    "completed",
    "failed",
    "cancelled",
)


@click.command()
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="List at most this many jobs.",
)
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON on stdout.")
@pass_ctx
def jobs(obj: Context, limit: int, status: str | None, as_json: bool) -> None:
    """List jobs (backups, restores, drills and prunes), newest first."""
    request = ListJobs(limit=limit, status=status)
    run(lambda: render.job_list(list_jobs(obj.settings, request), as_json))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
@click.option(
    "--check",
    is_flag=True,
    help="For a monitoring system: print one line per problem (a kind overdue, a failed last backup "
    "or drill) and exit 5, or print `ok` and exit 0.",
)
@pass_ctx
def status(obj: Context, as_json: bool, check: bool) -> None:
    """What Capsule is doing, when each kind was last backed up, and whether that is too long ago;
    how much the repository holds, and the last prune."""
    if check:
        run(lambda: render.status_check(current_status(obj.settings), as_json))
        return
    run(lambda: render.status(current_status(obj.settings), as_json))


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_ctx
def cancel(obj: Context, job_id: str, as_json: bool) -> None:
    """Cancel JOB, a backup, restore, drill or prune that has not finished (`capsule jobs` lists
    them): nothing more of it runs, and what it holds is released."""
    run(lambda: render.job_cancelled(cancel_job(obj.settings, Cancel(job_id)), as_json))


@click.command()
@click.option("--job", "job_id", help="Only the events of this job.")
@click.option("--since", help="Only events recorded at or after this time (local time unless it says).")
@click.option(
    "--verify",
    is_flag=True,
    help="Check every event against its seal and the chain instead; exit 3 at the first that does not match.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the events (or the check) as JSON on stdout.")
@pass_ctx
def audit(obj: Context, job_id: str | None, since: str | None, verify: bool, as_json: bool) -> None:
    """Who did what and when, read from the event log."""
    if verify and (job_id or since):
        raise click.UsageError("--verify checks the whole log: leave out --job and --since")
    if verify:
        run(lambda: render.log_verified(verify_log(obj.settings), as_json))
        return
    run(lambda: render.audit_trail(audit_events(obj.settings, Audit(job_id, parse_since(since))), as_json))


@click.command()
@pass_ctx
def replay(obj: Context) -> None:
    """Rebuild the job and snapshot tables from the event log, from its first event."""
    run(lambda: render.replayed(replay_log(obj.settings)))


@click.command("repair-log")
@pass_ctx
def repair_log(obj: Context) -> None:
    """Set a damaged event log aside (nothing is deleted) and start a new one with the repository's
    snapshots; a log that reads whole is left alone."""
    run(lambda: render.log_repaired(repair_event_log(obj.settings)))


@click.command()
@click.option(
    "--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="Steps run at the same time."
)
@click.option("--until-idle", is_flag=True, help="Exit once no unfinished job is left.")
@pass_ctx
def worker(obj: Context, threads: int, until_idle: bool) -> None:
    """Run job steps: from CAPSULE_BROKER_URL, or (without it) the unfinished jobs of this machine."""
    request = Work(threads=threads, until_idle=until_idle)
    run(
        lambda: render.worker_done(
            work(obj.settings, request, render.worker_started, render.worker_interrupted)
        )
    )


COMMANDS = (jobs, status, cancel, audit, replay, repair_log, worker)
