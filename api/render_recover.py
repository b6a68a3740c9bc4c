"""How `capsule recover` shows what it brought back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from capsule.api.render import human
from capsule.api.vocabulary import emit_json

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.recover import Recovered


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
    for job_id in result.cancelled_jobs:
        click.echo(f"Job {job_id} had not finished on the old machine: cancelled here, not carried on.")
    click.echo("`capsule audit` shows the history; `capsule verify --read-data` checks the repository.")
