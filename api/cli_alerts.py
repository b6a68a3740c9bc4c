"""The alert commands: `capsule alerts` (incidents open and recent) and `capsule alerts test`.

`capsule.api.cli` registers the group; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import render_alerts
from capsule.api.common import Context, pass_ctx, run
from capsule.orchestrator.usecases.alerts import list_alerts, send_test_alert


@click.group(invoke_without_command=True)
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="Recent incidents shown."
)
@click.option("--json", "as_json", is_flag=True, help="Print the incidents as JSON on stdout.")
@click.pass_context
def alerts(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The incidents open now (a kind overdue, a failed backup or drill), the recent ones, and how
    each target was told. `capsule alerts test` checks the targets."""
    if ctx.invoked_subcommand is not None:
        return
    obj = ctx.find_object(Context)
    assert obj is not None
    run(lambda: render_alerts.shown(list_alerts(obj.settings, limit), as_json))


@alerts.command("test")
@click.option("--json", "as_json", is_flag=True, help="Print each target's result as JSON on stdout.")
@pass_ctx
def alerts_test(obj: Context, as_json: bool) -> None:
    """Send a test alert to every target now (alerts.email, alerts.webhook); exit 1 if one fails."""
    run(lambda: render_alerts.tested(send_test_alert(obj.settings), as_json))


COMMANDS = (alerts,)
