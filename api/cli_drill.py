"""The restore drill command: `capsule drill`.

`capsule.api.cli` registers it on the `capsule` group; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import render
from capsule.api.common import Context, pass_ctx, run
from capsule.orchestrator.usecases.drill import Drill, run_drill


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what the drill proved as JSON on stdout.")
@pass_ctx
def drill(obj: Context, as_json: bool) -> None:
    """Prove that the backups restore: restore the newest database snapshot into a scratch folder
    and check it with SQLite, restore a random sample of the newest images and check each against
    its snapshot, then delete the copies. Exit 3 when something does not restore."""

    def go() -> int:
        with render.progress_bar("Drilling", not as_json) as progress:
            result = run_drill(obj.settings, Drill(), progress)
        return render.drilled(result, as_json)

    run(go)
