"""How `capsule prune` shows what its use case returned."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from capsule.api.exitcodes import EXIT_CODES
from capsule.api.render import human
from capsule.api.vocabulary import emit_json

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.prune import Pruned


def _packs(n: int) -> str:
    return f"{n} pack" if n == 1 else f"{n} packs"


def pruned(result: Pruned, as_json: bool) -> int:
    """What a prune reclaimed, or for a dry run what it would reclaim; the repository before and after."""
    if as_json:
        emit_json(result.as_dict())
        return EXIT_CODES.ok
    if result.dry_run:
        click.echo(
            f"A prune would free {human(result.bytes_freed)}: delete {_packs(result.packs_deleted)}, "
            f"{_packs(result.packs_repacked)} of them repacked first (their used blobs copied out)."
        )
        click.echo(
            f"Repository: {human(result.bytes_before)} now, {human(result.bytes_after)} at most after; "
            f"{human(result.unused_bytes)} unused. Nothing was changed (dry run)."
        )
        return EXIT_CODES.ok
    click.echo(
        f"Prune {result.job_id}: freed {human(result.bytes_freed)}; "
        f"{_packs(result.packs_deleted)} deleted, {_packs(result.packs_repacked)} repacked"
        + (
            f", {_packs(result.packs_rescued)} kept for a backup that came to use them"
            if result.packs_rescued
            else ""
        )
        + "."
    )
    click.echo(
        f"Repository: {human(result.bytes_before)} before, {human(result.bytes_after)} after "
        f"({result.seconds:.1f} s)."
    )
    return EXIT_CODES.ok
