"""How `capsule recover` shows what it brought back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from capsule.api.render import human
from capsule.api.vocabulary import emit_json

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.recover import ClosedJob, Recovered


def recovered(result: Recovered, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "recovery_id": result.recovery_id,
                "source": result.source,
                "location": result.location,
                "repository": str(result.repository),
                "objects_copied": result.objects_copied,
                "bytes_copied": result.bytes_copied,
                "objects_present": result.objects_present,
                "log_copy": result.log_copy,
                "events": result.events,
                "head_position": result.head_position,
                "refused_copies": [{"name": n, "reason": r} for n, r in result.refused_copies],
                "set_aside": [str(p) for p in result.set_aside],
                "needs_credentials": list(result.needs_credentials),
                "cancelled_jobs": list(result.cancelled_jobs),
                "cancelled": [
                    {
                        "job_id": job.job_id,
                        "job_type": job.job_type,
                        "step": job.step,
                        "saved_snapshots": list(job.saved_snapshots),
                        "uploads_left": list(job.uploads_left),
                    }
                    for job in result.cancelled
                ],
            }
        )
        return
    click.echo(
        f"Copied {result.objects_copied} objects ({human(result.bytes_copied)}) from {result.location} "
        f"into {result.repository}"
        + (f"; {result.objects_present} were there already." if result.objects_present else ".")
    )
    click.echo(
        f"Put back the event log: {result.events} events up to position {result.head_position}, from "
        f"its copy {result.log_copy}; the jobs, snapshots and settings are rebuilt from it."
    )
    for _, reason in result.refused_copies:
        click.echo(f"A newer copy of the log was not used: {reason}", err=True)
    for path in result.set_aside:
        click.echo(f"This machine's own short log was kept as {path}.")
    for name in result.needs_credentials:
        click.echo(
            f"The Google Drive destination {name} needs its credentials again: `capsule destinations remove "
            f"{name}`, then `capsule destinations add gdrive {name} --client-secrets FILE`."
        )
    for job in result.cancelled:
        click.echo(_closed(job))
    click.echo("`capsule audit` shows the history; `capsule verify --read-data` checks the repository.")


def _closed(job: ClosedJob) -> str:
    saved = ", ".join(snapshot[:12] for snapshot in job.saved_snapshots)
    plural = "s" if len(job.saved_snapshots) > 1 else ""
    if job.uploads_left:
        return (
            f"Job {job.job_id} (backup): its snapshot{plural} {saved} {'were' if plural else 'was'} saved "
            f"and {'are' if plural else 'is'} here; the old machine was still copying to "
            f"{', '.join(job.uploads_left)} when it copied its log. "
            "Closed here (cancelled): nothing to run again."
        )
    if saved:
        return (
            f"Job {job.job_id} ({job.job_type}) had not finished on the old machine (at {job.step}); its "
            f"snapshot{plural} {saved} {'were' if plural else 'was'} saved and {'are' if plural else 'is'} "
            "here. Cancelled here, not carried on."
        )
    return (
        f"Job {job.job_id} ({job.job_type}) had not finished on the old machine"
        + (f" (at {job.step})" if job.step else "")
        + ": cancelled here, not carried on."
    )
