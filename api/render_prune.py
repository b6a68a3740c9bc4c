"""How `capsule prune` shows what its use case returned."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from capsule.api.exitcodes import EXIT_CODES
from capsule.api.render import human
from capsule.api.vocabulary import emit_json

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.prune import Pruned

COPIED = " (the blobs still in use copied into new packs)"


def _young(result: Pruned) -> None:
    if result.packs_young:
        click.echo(
            f"{result.packs_young} pack(s) written in the last two hours left alone: a backup may still "
            "use them; a later prune looks again."
        )


def pruned(result: Pruned, as_json: bool) -> int:
    """What a prune gave back, or for a dry run would give back; the repository's size before and after."""
    if as_json:
        emit_json(result.as_dict())
        return EXIT_CODES.ok
    repacked = result.packs_repacked
    if result.dry_run:
        if result.packs_deleted:
            first = f", {repacked} of them to repack first{COPIED}" if repacked else ""
            click.echo(
                f"A prune would give back about {human(result.bytes_freed)}: "
                f"{result.packs_deleted} pack(s) to delete{first}."
            )
        else:
            click.echo("A prune would give back nothing now: every pack old enough to go is in use.")
        click.echo(
            f"Repository: {human(result.bytes_before)} now, {human(result.bytes_after)} after at most; "
            f"{human(result.unused_bytes)} unused. Nothing was changed (dry run)."
        )
        _young(result)
        return EXIT_CODES.ok
    first = f", {repacked} of them repacked first{COPIED}" if repacked else ""
    click.echo(
        f"Prune {result.job_id}: gave back {human(result.bytes_freed)}: "
        f"{result.packs_deleted} pack(s) deleted{first}."
    )
    if repacked:
        click.echo(
            f"Deleted {human(result.bytes_deleted or 0)} of packs, wrote {human(result.bytes_written or 0)} "
            "of new ones."
        )
    if result.packs_rescued:
        click.echo(f"{result.packs_rescued} pack(s) kept: a backup made meanwhile uses them.")
    click.echo(
        f"Repository: {human(result.bytes_before)} before, {human(result.bytes_after)} after "
        f"({result.seconds:.1f} s)."
    )
    _young(result)
    return EXIT_CODES.ok
