"""The `capsule` command line: each command parses its options, calls one use case of
`capsule.orchestrator.usecases` and renders the result (`capsule.api.render`).

A command imports its use case when it runs: the repository's modules (and numpy with them) take
longer to load than `capsule status` takes to answer.

Exit codes come from one table, `api/exitcodes.py`: an error's category decides its code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import structlog

from capsule.api import cli_alerts, cli_destinations, cli_forget, cli_jobs, cli_serve, cli_settings, render
from capsule.api.cli_demo import demo
from capsule.api.cli_drill import drill
from capsule.api.cli_prune import prune
from capsule.api.cli_sync import from_option, sync
from capsule.api.common import (
    LOG_FORMAT_HELP,
    LOG_LEVEL_HELP,
    Context,
    add_log_options,
    pass_ctx,
    run,
)
from capsule.api.exitcodes import EXIT_CODES
from capsule.api.filters import filter_options
from capsule.api.logging import FORMATS, LEVELS
from capsule.orchestrator.private import keep_private
from capsule.orchestrator.settings import SettingsInvalid

log = structlog.get_logger("capsule")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capsule-backup", prog_name="capsule", message="%(prog)s %(version)s")
@click.option("--log-level", type=click.Choice(list(LEVELS)), help=LOG_LEVEL_HELP)
@click.option("--log-format", type=click.Choice(FORMATS), help=LOG_FORMAT_HELP)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """Capsule: backups of a point-of-sale server's database, verified before every restore.

    Paths come from CAPSULE_DATABASE, CAPSULE_REPOSITORY, CAPSULE_HOME and CAPSULE_KEY_FILE (or
    capsule.toml). Exit codes: 0 ok, 1 failed, 2 usage, 3 damage found, or a backup completed with
    warnings, 4 locked, 5 attention needed (`status --check`), 130 interrupted.
    """
    try:
        obj = Context()
    except SettingsInvalid as e:
        click.echo(f"capsule: {e}", err=True)
        sys.exit(EXIT_CODES.usage)
    obj.log_level, obj.log_format = log_level, log_format
    obj.configure_logging()
    keep_private(obj.settings.home)  # sets the umask before anything, the log file included, is made
    ctx.obj = obj


@cli.command()
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also let this passphrase open the repository (for recovery without the key file).",
)
@click.option(
    "--exist-ok",
    is_flag=True,
    help="Succeed without change if the repository exists and the key file opens it.",
)
@pass_ctx
def init(obj: Context, passphrase_file: Path | None, exist_ok: bool) -> None:
    """Create the repository and its key file."""
    from capsule.orchestrator.usecases.repository import CreateRepository, create_repository  # noqa: PLC0415

    request = CreateRepository(passphrase_file=passphrase_file, exist_ok=exist_ok)
    run(lambda: render.created(create_repository(obj.settings, request)))


@cli.command()
@click.option(
    "--kind",
    type=click.Choice(["database", "files", "all"]),
    default="database",
    show_default=True,
    help="The database (CAPSULE_DATABASE), the product images (CAPSULE_UPLOADS), or both.",
)
@click.option("--full", is_flag=True, help="Re-read everything; reuse no blob whose pack is gone.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_ctx
def backup(obj: Context, kind: str, full: bool, as_json: bool) -> None:
    """Back up the database, the product images, or both into the repository."""
    from capsule.orchestrator.usecases.backup import Backup, back_up  # noqa: PLC0415

    request = Backup(kind=kind, full=full)

    def go() -> int:
        with render.progress_bar("Backing up", not as_json) as progress:
            result = back_up(obj.settings, request, progress)
        return render.backed_up(result, as_json)

    run(go)


@cli.command()
@filter_options
@from_option
@click.option("--json", "as_json", is_flag=True, help="Print the snapshots as JSON on stdout.")
@pass_ctx
def snapshots(  # noqa: PLR0917 (click passes options by position)
    obj: Context,
    hosts: tuple[str, ...],
    paths: tuple[str, ...],
    tags: tuple[str, ...],
    source: str | None,
    as_json: bool,
) -> None:
    """List the snapshots, oldest first; those that cannot be read are listed as damaged."""
    from capsule.orchestrator.usecases.snapshots import ChooseSnapshots, list_snapshots  # noqa: PLC0415

    choice = ChooseSnapshots(hosts, paths, tags)
    run(lambda: render.snapshot_list(list_snapshots(obj.settings, choice, source), as_json))


@cli.command()
@click.argument("snapshot")
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Restore into this folder, leaving the live database and images as they are.",
)
@click.option("--force", is_flag=True, help="Replace files that already exist under --to.")
@click.option(
    "--check",
    "check_database",
    is_flag=True,
    help="Also run SQLite's quick_check on the restored database (--in-place always does).",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Restore into the live database (CAPSULE_DATABASE) after saving it aside.",
)
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="PATTERN",
    help="Files snapshots: restore only paths matching this glob (repeatable), e.g. 'shoes/*.jpg'.",
)
@click.option(
    "--from-other-source",
    is_flag=True,
    help="Allow a snapshot of another database (another machine or path) to replace the live one; "
    "`latest-*` then picks among every source.",
)
@click.option(
    "--special-bits",
    is_flag=True,
    help="Give files and folders back their setuid and setgid bits (without it they are cleared).",
)
@filter_options
@from_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_ctx
def restore(  # noqa: PLR0917 (click passes options by position)
    obj: Context,
    snapshot: str,
    to: Path | None,
    force: bool,
    check_database: bool,
    in_place: bool,
    include: tuple[str, ...],
    from_other_source: bool,
    hosts: tuple[str, ...],
    paths: tuple[str, ...],
    tags: tuple[str, ...],
    special_bits: bool,
    source: str | None,
    as_json: bool,
) -> None:
    """Restore SNAPSHOT: `latest-database` (the newest snapshot of CAPSULE_DATABASE on this
    machine), `latest-files` (of CAPSULE_UPLOADS, the images), `latest` (while the repository holds
    only one of the two kinds), an id or a unique id prefix. --host, --path and --tag choose among
    the snapshots `latest-*` picks from (`capsule snapshots` takes them too)."""
    from capsule.orchestrator.usecases.restore import Restore, restore_snapshot  # noqa: PLC0415
    from capsule.orchestrator.usecases.snapshots import ChooseSnapshots  # noqa: PLC0415

    if in_place == (to is not None):
        raise click.UsageError("give exactly one of --to DIR or --in-place")
    request = Restore(
        snapshot=snapshot,
        to=to,
        force=force,
        check_database=check_database,
        include=include,
        from_other_source=from_other_source,
        special_bits=special_bits,
        choice=ChooseSnapshots(hosts, paths, tags),
        source=source,
    )

    def go() -> None:
        with render.progress_bar("Restoring", not as_json) as progress:
            result = restore_snapshot(obj.settings, request, progress)
        render.restored(result, as_json)

    run(go)


@cli.command()
@click.argument("snapshot")
@click.argument("path")
@pass_ctx
def cat(obj: Context, snapshot: str, path: str) -> None:
    """Write one file of SNAPSHOT to stdout, e.g. `capsule cat latest-files shoes/red.jpg > red.jpg`."""
    from capsule.orchestrator.usecases.snapshots import CatFile, read_file  # noqa: PLC0415

    run(lambda: read_file(obj.settings, CatFile(snapshot, path), render.data_stdout))


@cli.command("ls")
@click.argument("snapshot")
@click.argument("path", default="")
@click.option("--json", "as_json", is_flag=True, help="Print the folder's items as JSON on stdout.")
@pass_ctx
def ls_cmd(obj: Context, snapshot: str, path: str, as_json: bool) -> None:
    """List a folder of SNAPSHOT (its top by default): type and mode, size, time and name, e.g.
    `capsule ls latest-files shoes`. A database snapshot holds one item, the database."""
    from capsule.orchestrator.usecases.snapshots import ListFolder, list_folder  # noqa: PLC0415

    run(lambda: render.folder_listing(list_folder(obj.settings, ListFolder(snapshot, path)), as_json))


@cli.command()
@click.argument("pattern")
@click.option(
    "--snapshot",
    metavar="SNAPSHOT",
    help="Search only this snapshot (`latest-files`, an id or a prefix); by default every one, newest first.",
)
@click.option("-i", "--ignore-case", is_flag=True, help="Match upper and lower case alike.")
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON on stdout.")
@pass_ctx
def find(obj: Context, pattern: str, snapshot: str | None, ignore_case: bool, as_json: bool) -> None:
    """Find files by PATTERN, a glob on the name (`red*.jpg`) or, with a `/`, on the whole path
    (`shoes/*.jpg`), in every snapshot: each match with its snapshot, time and size."""
    from capsule.orchestrator.usecases.snapshots import FindFiles, find_files  # noqa: PLC0415

    request = FindFiles(pattern, snapshot, ignore_case)
    run(lambda: render.found(find_files(obj.settings, request), as_json))


@cli.command()
@click.option(
    "--read-data",
    is_flag=True,
    help="Also decrypt and check every blob of every pack, and every image against its SHA-256.",
)
@from_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@pass_ctx
def verify(obj: Context, read_data: bool, source: str | None, as_json: bool) -> None:
    """Check the repository and every snapshot as a restore would; exit 3 if anything is damaged,
    missing or would be refused."""
    from capsule.orchestrator.usecases.verify import Verify, verify_repository  # noqa: PLC0415

    def go() -> int:
        with render.progress_bar("Reading packs", read_data and not as_json) as progress:
            report = verify_repository(obj.settings, Verify(read_data=read_data, source=source), progress)
        return render.verified(report, read_data, as_json)

    run(go)


@cli.command("rebuild-index")
@pass_ctx
def rebuild_index_cmd(obj: Context) -> None:
    """Rebuild the index files from the packs (takes an exclusive lock)."""
    from capsule.orchestrator.usecases.repository import rebuild_repository_index  # noqa: PLC0415

    run(lambda: render.index_rebuilt(rebuild_repository_index(obj.settings)))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Read everything and say what would be done; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_ctx
def repair(obj: Context, dry_run: bool, as_json: bool) -> None:
    """Set damaged packs aside (nothing is deleted), keep every intact blob, rebuild the index, and
    name each snapshot that lost data: an images snapshot is replaced by one of its intact files, a
    database snapshot is set aside. Takes an exclusive lock."""
    from capsule.orchestrator.usecases.repair import Repair, repair_repository  # noqa: PLC0415

    def go() -> None:
        with render.progress_bar("Reading packs", not as_json) as progress:
            result = repair_repository(obj.settings, Repair(dry_run=dry_run), progress)
        render.repaired(result, as_json)

    run(go)


@cli.command()
@click.option("--all", "remove_all", is_flag=True, help="Remove live locks too (a host is gone).")
@pass_ctx
def unlock(obj: Context, remove_all: bool) -> None:
    """Remove stale locks left by processes that died."""
    from capsule.orchestrator.usecases.repository import Unlock, remove_locks  # noqa: PLC0415

    run(lambda: render.unlocked(remove_locks(obj.settings, Unlock(remove_all=remove_all))))


for command in (*cli_jobs.COMMANDS, *cli_settings.COMMANDS, demo, *cli_alerts.COMMANDS, *cli_serve.COMMANDS):
    cli.add_command(command)
for command in cli_destinations.COMMANDS:
    cli.add_command(command)
cli.add_command(drill)
cli.add_command(prune)
cli.add_command(sync)
for command in cli_forget.COMMANDS:
    cli.add_command(command)
add_log_options(cli)


def main() -> None:
    cli(prog_name="capsule")
