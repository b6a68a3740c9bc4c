"""The prune command: `capsule prune`.

`capsule.api.cli` registers it on the `capsule` group; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import render, render_prune
from capsule.api.common import Context, pass_ctx, run


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option(
    "--dry-run", is_flag=True, help="Only say how much a prune would free (bytes and packs); change nothing."
)
@pass_ctx
def prune(obj: Context, as_json: bool, dry_run: bool) -> None:
    """Give back the space of data that no snapshot uses any more (after snapshots were forgotten).

    Packs nobody uses are deleted; a pack mostly unused has its used blobs copied out first. Backups
    keep running meanwhile: the prune waits for those that began before it rewrote the index, and
    only then deletes. One prune runs at a time; a second waits for the first."""
    from capsule.orchestrator.usecases.prune import Prune, run_prune  # noqa: PLC0415

    def go() -> int:
        with render.progress_bar("Pruning", not as_json and not dry_run) as progress:
            result = run_prune(obj.settings, Prune(dry_run=dry_run), progress)
        return render_prune.pruned(result, as_json)

    run(go)
