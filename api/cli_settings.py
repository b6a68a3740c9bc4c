"""The settings commands: `capsule settings show`, `capsule settings set KEY VALUE` and
`capsule schedules`.

`capsule.api.cli` registers the group; this module does not import it.
"""

from __future__ import annotations

import click

from capsule.api import render_settings
from capsule.api.common import Context, pass_ctx, read_value, run
from capsule.orchestrator.usecases.schedules import list_schedules
from capsule.orchestrator.usecases.settings import ChangeSetting, change, show


@click.group()
def settings() -> None:
    """What Capsule does by itself: schedules, time zone, retention, alerts."""


@settings.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the whole document as JSON, with its version.")
@pass_ctx
def settings_show(obj: Context, as_json: bool) -> None:
    """Print every setting, its value and whether it is the default."""
    run(lambda: render_settings.shown(show(obj.settings), as_json))


# A value may start with a dash (a negative count, a cron step): one that is no option of this
# command is its value, so that the setting's own rule answers it, not "no such option".
@settings.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.option(
    "--if-version",
    "expected_version",
    type=click.IntRange(0),
    help="Refuse the change if the settings are no longer at this version (see `settings show --json`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the change as JSON.")
@pass_ctx
def settings_set(obj: Context, key: str, value: str, expected_version: int | None, as_json: bool) -> None:
    """Change one setting: `capsule settings set schedules.database.cron '30 * * * *'`. VALUE `-`
    reads it from standard input (without echo at a terminal), so that a secret such as
    `alerts.smtp.password` stays out of the shell's history."""
    if value == "-":
        value = read_value(key)
    request = ChangeSetting(key=key, value=value, expected_version=expected_version)
    run(lambda: render_settings.changed(change(obj.settings, request), as_json))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@pass_ctx
def schedules(obj: Context, as_json: bool) -> None:
    """Each schedule: when it last ran, how that went, and its next three due times."""
    run(lambda: render_settings.schedules(list_schedules(obj.settings), as_json))


COMMANDS = (settings, schedules)
