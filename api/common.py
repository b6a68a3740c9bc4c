"""What every command module of the CLI shares: the settings it parsed, and `run`, which turns
Capsule's errors into one sentence and an exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import click

from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings

EXIT_DAMAGE = exit_code(Category.DAMAGED)


class Context:
    def __init__(self) -> None:
        self.settings = Settings()


pass_ctx = click.make_pass_decorator(Context)


def _terminated(_signum: int, _frame: object) -> None:
    # SIGTERM (systemd stopping a unit, `kill`, cron's timeout) takes Ctrl-C's way out: what the
    # command holds is released and the job's log says where it stopped.
    raise KeyboardInterrupt("SIGTERM")


def run(fn: Callable[[], int | None]) -> None:
    """Run a command; turn our errors into one sentence and an exit code, never a traceback.
    SIGTERM is handled as Ctrl-C is: exit 130 after the command has released what it holds."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = fn()
    except CapsuleError as e:
        click.echo(f"capsule: {e}", err=True)
        sys.exit(exit_code(e.category))
    except KeyboardInterrupt:
        click.echo("capsule: interrupted; nothing half-written was kept", err=True)
        sys.exit(EXIT_CODES.interrupted)
    sys.exit(code or EXIT_CODES.ok)
