"""What every command module of the CLI shares: the settings it parsed, and `run`, which turns
Capsule's errors into one sentence and an exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.api.logging import FORMATS, LEVELS, configure
from capsule.domain.errors import CapsuleError, Category

if TYPE_CHECKING:
    from capsule.orchestrator.settings import Settings

EXIT_DAMAGE = exit_code(Category.DAMAGED)


class Context:
    def __init__(self) -> None:
        # Loaded here, not with the module: `capsule --help` reads no settings.
        from capsule.orchestrator.settings import load_settings  # noqa: PLC0415

        self.settings: Settings = load_settings()
        self.log_level: str | None = None
        self.log_format: str | None = None

    def configure_logging(self) -> None:
        """Logging as the options given so far ask (before or after the command's name), else as
        the settings say."""
        settings = self.settings
        configure(self.log_level or settings.log_level, self.log_format or settings.log_format, settings.home)


pass_ctx = click.make_pass_decorator(Context)

LOG_LEVEL_HELP = "Log lines at this level and above (default CAPSULE_LOG_LEVEL, or info)."
LOG_FORMAT_HELP = (
    "Where log lines go besides CAPSULE_HOME/logs/capsule.log: `json` or `console` also sends them "
    "to stderr; `auto` (the default) only when stderr is not a terminal."
)


def _log_option_given(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    obj = ctx.find_object(Context)
    if value is None or obj is None or param.name is None:
        return
    setattr(obj, param.name, value)
    obj.configure_logging()


def log_options() -> list[click.Parameter]:
    """`--log-level` and `--log-format` for a command, so that they work after its name too."""
    return [
        click.Option(
            ["--log-level"],
            type=click.Choice(list(LEVELS)),
            expose_value=False,
            callback=_log_option_given,
            help=LOG_LEVEL_HELP,
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(FORMATS),
            expose_value=False,
            callback=_log_option_given,
            help=LOG_FORMAT_HELP,
        ),
    ]


def add_log_options(command: click.Command) -> None:
    """Give `command` the log options unless it has them, and every command under it if it is a group."""
    names = {name for p in command.params for name in p.opts}
    if "--log-level" not in names:
        command.params.extend(log_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_log_options(sub)


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


def read_value(prompt: str) -> str:
    """One line from standard input, for a value that must stay out of the shell's history: asked
    for without echo at a terminal, read as it comes from a pipe."""
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True, default="", show_default=False, err=True))
    return sys.stdin.readline().rstrip("\r\n")


F = TypeVar("F", bound=Callable[..., object])

FROM_HELP = (
    "Read a copy instead of the local repository: a destination's name, or the path of a folder "
    "holding a copy (/mnt/usb/capsule). Opened with the same key file or passphrase."
)


def from_option(command: F) -> F:
    """`--from DEST`, for the commands that read a repository."""
    return click.option("--from", "source", metavar="DEST|PATH", help=FROM_HELP)(command)


def capsule_version() -> str:
    """The installed package's version (`capsule --version`, `GET /healthz`), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - not for every command

    try:
        return version("capsule-backup")
    except PackageNotFoundError:
        return "unknown"
