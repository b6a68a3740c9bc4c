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


def _young(result: Pruned) -> None:
    if result.packs_young:
        them = "it" if result.packs_young == 1 else "them"
        click.echo(
            f"{_packs(result.packs_young)} written in the last two hours left alone: a backup may still "
            f"use {them}; a later prune looks again."
        )


def _what(result: Pruned) -> str:
    """`3 packs`, `3 packs, 1 of them once the blobs still in use were copied out`."""
    deleted, repacked = result.packs_deleted, result.packs_repacked
    if not repacked:
        return _packs(deleted)
    which = "it" if deleted == 1 else f"{repacked} of them" if repacked < deleted else "them"
    return f"{_packs(deleted)}, {which} once the blobs still in use were copied into new packs"


def pruned(result: Pruned, as_json: bool) -> int:
    """What a prune gave back, or for a dry run would give back; the repository's size before and after."""
    if as_json:
        emit_json(result.as_dict())
        return EXIT_CODES.ok
    if result.dry_run:
        if result.packs_deleted:
            click.echo(
                f"A prune would give back about {human(result.bytes_freed)} by deleting {_what(result)}."
            )
        else:
            click.echo("A prune would give back nothing now: every pack old enough to go is in use.")
        click.echo(
            f"Repository: {human(result.bytes_before)} now, {human(result.bytes_after)} after at most; "
            f"{human(result.unused_bytes)} unused. Nothing was changed (dry run)."
        )
        _young(result)
        return EXIT_CODES.ok
    click.echo(f"Prune {result.job_id}: gave back {human(result.bytes_freed)} by deleting {_what(result)}.")
    if result.packs_repacked:
        click.echo(
            f"Deleted {human(result.bytes_deleted or 0)} of packs, wrote {human(result.bytes_written or 0)} "
            "of new ones."
        )
    if result.packs_rescued:
        click.echo(f"{_packs(result.packs_rescued)} kept: a backup made meanwhile uses them.")
    click.echo(
        f"Repository: {human(result.bytes_before)} before, {human(result.bytes_after)} after "
        f"({result.seconds:.1f} s)."
    )
    _young(result)
    return EXIT_CODES.ok
