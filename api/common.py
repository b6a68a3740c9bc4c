"""What every command module of the CLI shares: the settings it parsed, and `run`, which turns
Capsule's errors into one sentence and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import load_settings

EXIT_DAMAGE = exit_code(Category.DAMAGED)


class Context:
    def __init__(self) -> None:
        self.settings = load_settings()


pass_ctx = click.make_pass_decorator(Context)


def run(fn: Callable[[], int | None]) -> None:
    """Run a command; turn our errors into one sentence and an exit code, never a traceback."""
    try:
        code = fn()
    except CapsuleError as e:
        click.echo(f"capsule: {e}", err=True)
        sys.exit(exit_code(e.category))
    except KeyboardInterrupt:
        click.echo("capsule: interrupted; nothing half-written was kept", err=True)
        sys.exit(EXIT_CODES.interrupted)
    sys.exit(code or EXIT_CODES.ok)
