"""The service commands: `capsule serve` (everything in one process) and `capsule scheduler`
(the schedules alone, in distributed mode).

`capsule.api.cli` registers them; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import http, render_serve
from capsule.api.common import Context, pass_ctx, run
from capsule.orchestrator.usecases.serve import GRACE_SECONDS, Serve, serve

HOST_HELP = "Answer HTTP on this address (default CAPSULE_HTTP_HOST, or 127.0.0.1)."
PORT_HELP = "Answer HTTP on this port (default CAPSULE_HTTP_PORT, or 8000; 0 picks a free one)."
GRACE_HELP = "On SIGTERM or Ctrl-C, let a running step go on this long before recording it interrupted."


@click.command("serve")
@click.option("--host", help=HOST_HELP)
@click.option("--port", type=click.IntRange(0, 65535), help=PORT_HELP)
@click.option(
    "--grace-seconds", type=click.FloatRange(0), default=GRACE_SECONDS, show_default=True, help=GRACE_HELP
)
@pass_ctx
def serve_cmd(obj: Context, host: str | None, port: int | None, grace_seconds: float) -> None:
    """Run Capsule by itself: the schedules, the jobs (unless CAPSULE_BROKER_URL names a broker)
    and `GET /healthz`, until SIGTERM or Ctrl-C. A kind with no snapshot yet is backed up at once."""
    request = Serve(host=host, port=port, grace_seconds=grace_seconds)
    run(lambda: serve(obj.settings, request, http.open_front_door, render_serve.started, render_serve.ended))


@click.command("scheduler")
@click.option("--host", help=HOST_HELP)
@click.option("--port", type=click.IntRange(0, 65535), help="Also answer GET /healthz on this port.")
@pass_ctx
def scheduler_cmd(obj: Context, host: str | None, port: int | None) -> None:
    """Distributed mode: run the schedules alone (CAPSULE_BROKER_URL set; `capsule worker`
    processes run the jobs), until SIGTERM or Ctrl-C."""
    request = Serve(host=host, port=port, scheduler_only=True)
    run(lambda: serve(obj.settings, request, http.open_front_door, render_serve.started, render_serve.ended))


COMMANDS = (serve_cmd, scheduler_cmd)
