"""`capsule recover --from DEST`: bring the repository and the event log back on a new machine.

`capsule.api.cli` registers the command; this module loads only click and its renderer: the use
case is imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from capsule.api import render, render_recover
from capsule.api.common import Context, pass_ctx, run


@click.command()
@click.option(
    "--from",
    "source",
    required=True,
    metavar="DEST|PATH",
    help="The copy to recover from: a destination's name, or the path of a folder holding a copy.",
)
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the repository into this empty folder instead of CAPSULE_REPOSITORY (then set it to it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was recovered as JSON on stdout.")
@pass_ctx
def recover(obj: Context, source: str, to: Path | None, as_json: bool) -> None:
    """On a new machine, with the key: copy the repository back from a destination's copy, put back
    the event log from its newest encrypted copy there (checked against its chain), and rebuild the
    jobs, snapshots and settings from it. Refused when this home's event log or the repository
    folder already holds anything of its own."""
    from capsule.orchestrator.usecases.recover import Recover, recover  # noqa: PLC0415

    def go() -> None:
        with render.progress_bar("Copying", not as_json) as progress:
            result = recover(obj.settings, Recover(source, to), progress)
        render_recover.recovered(result, as_json)

    run(go)


COMMANDS = (recover,)
