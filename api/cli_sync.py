"""`capsule sync [DEST]`: copy the local repository to its destinations.

`capsule.api.cli` registers the command; this module loads only click and the renderers, as the
other command modules do: the use case is imported when the command runs.
"""

from __future__ import annotations

import click

from capsule.api import render_sync
from capsule.api.common import Context, pass_ctx, run


@click.command()
@click.argument("destination", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print what each destination got as JSON on stdout.")
@pass_ctx
def sync(obj: Context, destination: str | None, as_json: bool) -> None:
    """Copy to DESTINATION (every enabled destination when none is named) each object of the local
    repository it lacks: config and keys, then packs, then index files, then snapshots, so the copy
    is a complete repository at every moment. A second run sends nothing. Nothing is deleted on a
    destination. At the end, each destination also gets an encrypted copy of the event log when it
    moved (what `capsule recover` brings back). A destination that fails is reported and the others
    go on; the exit code is that of the first failure."""
    from capsule.orchestrator.usecases.sync import Sync, sync  # noqa: PLC0415

    run(lambda: render_sync.synced(sync(obj.settings, Sync(destination)), as_json))


COMMANDS = (sync,)
