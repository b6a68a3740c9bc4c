"""How `capsule forget` and `capsule tag` show what their use cases returned."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from capsule.api.vocabulary import emit_json

if TYPE_CHECKING:
    from datetime import datetime, tzinfo

    from capsule.orchestrator.usecases.forget import ForgetReport, Tagged
    from capsule.orchestrator.usecases.prune import Pruned


def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None  # the machine's own, as astimezone() takes it


def _local(moment: datetime, zone: tzinfo | None) -> str:
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M}"


def forgotten(report: ForgetReport, as_json: bool, *, pruning: bool = False) -> None:
    """Every verdict, then the counts; `pruning`: a prune follows in the same run."""
    if as_json:
        emit_json(report.as_dict())
        return
    zone = _zone(report.timezone)
    width = max((len(j.kind) for j in report.judged), default=0)
    source = None
    for j in report.judged:
        if j.source != source:
            source = j.source
            click.echo(f"{j.kind} snapshots of {source} (times in {report.timezone}):")
        action = "keep  " if j.keep else "forget"
        because = ", ".join(j.reasons) if j.keep else "no rule keeps it: " + "; ".join(j.reasons)
        if j.reasons and j.reasons[0].startswith("by hand"):
            because = j.reasons[0]
        click.echo(f"  {action}  {j.snapshot_id[:12]}  {_local(j.time, zone)}  {j.kind:<{width}}  {because}")
    if report.completed:
        done = "still to delete (forgotten earlier)" if report.dry_run else "deleted now (forgotten earlier)"
        click.echo(
            f"{len(report.completed)} snapshot file(s) {done}: " + ", ".join(s[:12] for s in report.completed)
        )
    if report.meanwhile:
        click.echo(
            f"{len(report.meanwhile)} forgotten or pinned by another process meanwhile: "
            + ", ".join(s[:12] for s in report.meanwhile)
        )
    if report.dry_run:
        click.echo(
            f"Dry run: would keep {report.kept}, would forget {report.to_forget}; nothing was changed."
        )
    else:
        tail = "; `capsule prune` gives their space back" if report.forgotten and not pruning else ""
        click.echo(f"Kept {report.kept}, forgotten {len(report.forgotten)}{tail}.")


def forgot_and_pruned(report: ForgetReport, pruned: Pruned, as_json: bool) -> int | None:
    """`forget --prune`: the forget was shown as it ended (but with --json); now the prune, or both
    as one JSON document."""
    if as_json:
        emit_json({"forget": report.as_dict(), "prune": pruned.as_dict()})
        return None
    from capsule.api import render_prune  # noqa: PLC0415

    return render_prune.pruned(pruned, as_json)


def tagged(result: Tagged, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_dict())
        return
    tags = ", ".join(result.tags) or "none"
    if not result.added and not result.removed:
        click.echo(f"Snapshot {result.snapshot_id[:12]} already has those tags; its tags: {tags}.")
        return
    changes = [f"added {', '.join(result.added)}"] if result.added else []
    changes += [f"removed {', '.join(result.removed)}"] if result.removed else []
    pinned = " It is pinned: no retention policy forgets it." if "keep" in result.tags else ""
    click.echo(f"Snapshot {result.snapshot_id[:12]}: {'; '.join(changes)}; its tags: {tags}.{pinned}")
