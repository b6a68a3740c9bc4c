"""The destination commands: `capsule destinations list | add folder | add gdrive | renew | enable |
disable | bandwidth | resume | remove | test`.

`capsule.api.cli` registers the group; this module does not import it. Only click, `api.common`
and the renderer load with it: each command imports its use case when it runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from capsule.api import render_destinations
from capsule.api.common import Context, pass_ctx, run

NAME_HELP = "lowercase letters, digits and -, at most 32"
BANDWIDTH_HELP = "The most uploads to it may use, in bytes a second: 2MiB/s, 512KiB/s (default: no limit)."
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
PORT_HELP = (
    "The loopback port that receives Google's redirect (default: a free one); fix it to open an SSH "
    "tunnel to it beforehand."
)


@click.group(invoke_without_command=True)
@click.pass_context
def destinations(ctx: click.Context) -> None:
    """The off-site copies of the repository: a folder on a NAS share or a USB disk, a Google Drive
    folder. Without a subcommand, lists them."""
    if ctx.invoked_subcommand is not None:
        return
    ctx.invoke(destinations_list)


@destinations.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the destinations as JSON, secrets masked.")
@pass_ctx
def destinations_list(obj: Context, as_json: bool = False) -> None:
    """Each destination: its name, kind, where its copy is, and who added it when."""
    from capsule.orchestrator.usecases.destinations import list_destinations  # noqa: PLC0415

    run(lambda: render_destinations.listed(list_destinations(obj.settings), as_json))


@destinations.group("add")
def destinations_add() -> None:
    """Add a destination: `add folder NAME PATH` or `add gdrive NAME --client-secrets FILE`."""


@destinations_add.command("folder")
@click.argument("name")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the destination added as JSON.")
@pass_ctx
def add_folder_command(obj: Context, name: str, path: str, as_json: bool) -> None:
    """Add a folder destination NAME (lowercase letters, digits and -, at most 32) at PATH, an
    absolute path to a folder inside a mounted NAS share or USB disk (/mnt/nas/capsule)."""
    from capsule.orchestrator.usecases.destinations import add_folder  # noqa: PLC0415

    run(lambda: render_destinations.changed(add_folder(obj.settings, name, path), as_json))


@destinations_add.command("gdrive")
@click.argument("name")
@click.option(
    "--client-secrets",
    required=True,
    type=FILE,
    help="The OAuth client's JSON from the Google Cloud console (`installed` or `web`).",
)
@click.option(
    "--refresh-token-file",
    type=FILE,
    help="A file holding a refresh token obtained elsewhere, one line; else consent is asked for here.",
)
@click.option("--folder", "folder_name", help="The Drive folder's name (default capsule-NAME).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help=PORT_HELP)
@click.option("--bandwidth", help=BANDWIDTH_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the destination added as JSON, secrets masked.")
@pass_ctx
def add_gdrive_command(  # noqa: PLR0917 (click passes options by position)
    obj: Context,
    name: str,
    client_secrets: Path,
    refresh_token_file: Path | None,
    folder_name: str | None,
    port: int,
    bandwidth: str | None,
    as_json: bool,
) -> None:
    """Add a Google Drive destination NAME. Without --refresh-token-file, prints the consent address
    to open in a browser on any machine and takes Google's answer back (by a redirect to this
    machine's loopback, or pasted). The client secret and the refresh token are sealed before they
    are recorded, and never printed."""
    from capsule.orchestrator.usecases.consent import add_drive  # noqa: PLC0415

    run(
        lambda: render_destinations.changed(
            add_drive(
                obj.settings,
                name,
                client_secrets,
                refresh_token_file,
                render_destinations.TERMINAL,
                port=port,
                folder_name=folder_name,
                bandwidth=bandwidth,
            ),
            as_json,
        )
    )


@destinations.command("renew")
@click.argument("name")
@click.option(
    "--refresh-token-file",
    type=FILE,
    help="A file holding a new refresh token obtained elsewhere, one line; else consent is asked for here.",
)
@click.option(
    "--client-secrets",
    type=FILE,
    help="The OAuth client's JSON, when its consent address is not Google's (it must be the same client).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=0, help=PORT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the destination as JSON, secrets masked.")
@pass_ctx
def renew_command(  # noqa: PLR0917 (click passes options by position)
    obj: Context,
    name: str,
    refresh_token_file: Path | None,
    client_secrets: Path | None,
    port: int,
    as_json: bool,
) -> None:
    """Consent again for the Google Drive destination NAME (its consent was revoked or expired): asks
    for consent here as `add gdrive` does, or takes a new refresh token from a file."""
    from capsule.orchestrator.usecases.consent import renew  # noqa: PLC0415

    run(
        lambda: render_destinations.changed(
            renew(
                obj.settings,
                name,
                refresh_token_file,
                client_secrets,
                render_destinations.TERMINAL,
                port=port,
            ),
            as_json,
        )
    )


@destinations.command("enable")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the destination as JSON.")
@pass_ctx
def enable_command(obj: Context, name: str, as_json: bool) -> None:
    """Turn destination NAME back on."""
    from capsule.orchestrator.usecases.destinations import set_enabled  # noqa: PLC0415

    run(lambda: render_destinations.changed(set_enabled(obj.settings, name, True), as_json))


@destinations.command("disable")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the destination as JSON.")
@pass_ctx
def disable_command(obj: Context, name: str, as_json: bool) -> None:
    """Turn destination NAME off without removing it (a USB disk taken away for a while)."""
    from capsule.orchestrator.usecases.destinations import set_enabled  # noqa: PLC0415

    run(lambda: render_destinations.changed(set_enabled(obj.settings, name, False), as_json))


@destinations.command("bandwidth")
@click.argument("name")
@click.argument("rate")
@click.option("--json", "as_json", is_flag=True, help="Print the destination as JSON.")
@pass_ctx
def bandwidth_command(obj: Context, name: str, rate: str, as_json: bool) -> None:
    """Cap the bytes a second uploads to the Google Drive destination NAME may use: RATE is a number
    with a unit of KiB/s or MiB/s, or `off` for no limit. The shop's own traffic keeps the rest."""
    from capsule.orchestrator.usecases.destinations import limit_bandwidth  # noqa: PLC0415

    run(lambda: render_destinations.changed(limit_bandwidth(obj.settings, name, rate), as_json))


@destinations.command("resume")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the destination as JSON.")
@pass_ctx
def resume_command(obj: Context, name: str, as_json: bool) -> None:
    """Let uploads to destination NAME go on now, before the pause its rate limit caused runs out."""
    from capsule.orchestrator.usecases.destinations import resume  # noqa: PLC0415

    run(lambda: render_destinations.changed(resume(obj.settings, name), as_json))


@destinations.command("remove")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the destination removed as JSON.")
@pass_ctx
def remove_command(obj: Context, name: str, as_json: bool) -> None:
    """Remove destination NAME from the settings; what it holds stays where it is."""
    from capsule.orchestrator.usecases.destinations import remove  # noqa: PLC0415

    run(lambda: render_destinations.changed(remove(obj.settings, name), as_json))


@destinations.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def test_command(obj: Context, name: str, as_json: bool) -> None:
    """Open destination NAME and write, list, read back and remove a probe object; exit 1 if that fails."""
    from capsule.orchestrator.usecases.destinations import probe_destination  # noqa: PLC0415

    run(lambda: render_destinations.probed(probe_destination(obj.settings, name), as_json))


COMMANDS = (destinations,)
