"""The `capsule` command line: each command parses its options, calls one use case of
`capsule.orchestrator.usecases` and renders the result (`capsule.api.render`).

A command imports its use case when it runs: the repository's modules (and numpy with them) take
longer to load than `capsule status` takes to answer. The commands defined in other modules
(`cli_*.py`) load only when one of them is asked for: `capsule --help` lists them from the table
`COMMANDS` below (see `capsule.api.lazygroup`).

Exit codes come from one table, `api/exitcodes.py`: an error's category decides its code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from capsule.api import render
from capsule.api.common import (
    LOG_FORMAT_HELP,
    LOG_LEVEL_HELP,
    Context,
    add_log_options,
    capsule_version,
    from_option,
    pass_ctx,
    run,
)
from capsule.api.exitcodes import EXIT_CODES
from capsule.api.filters import filter_options
from capsule.api.lazygroup import LazyCommand, LazyGroup
from capsule.api.logging import FORMATS, LEVELS
from capsule.orchestrator.private import keep_private


def _command(module: str, attribute: str, summary: str) -> LazyCommand:
    return LazyCommand(f"capsule.api.{module}", attribute, summary)


COMMANDS = {
    "alerts": _command(
        "cli_alerts",
        "alerts",
        "The incidents open now (a kind overdue, a failed backup or drill), the recent ones, and how "
        "each target was told.",
    ),
    "audit": _command("cli_jobs", "audit", "Who did what and when, read from the event log."),
    "cancel": _command(
        "cli_jobs",
        "cancel",
        "Cancel JOB, a backup, restore, drill or prune that has not finished (`capsule jobs` lists "
        "them): nothing more of it runs, and what it holds is released.",
    ),
    "demo": _command("cli_demo", "demo", "A sample shop to try Capsule on."),
    "destinations": _command(
        "cli_destinations",
        "destinations",
        "The off-site copies of the repository: a folder on a NAS share or a USB disk, a Google Drive "
        "folder.",
    ),
    "drill": _command(
        "cli_drill",
        "drill",
        "Prove that the backups restore: restore the newest database snapshot into a scratch folder "
        "and check it with SQLite, restore a random sample of the newest images and check each "
        "against its snapshot, then delete the copies.",
    ),
    "forget": _command(
        "cli_forget",
        "forget",
        "Apply the retention policies (`capsule settings show` lists them): print every snapshot "
        "with the rules that keep it, or why none does, and forget those none keeps.",
    ),
    "jobs": _command("cli_jobs", "jobs", "List jobs (backups, restores, drills and prunes), newest first."),
    "key": _command(
        "cli_keys",
        "key",
        "The ways into the repository: key files and passphrases.",
    ),
    "prune": _command(
        "cli_prune",
        "prune",
        "Give back the space of data that no snapshot uses any more (after snapshots were forgotten).",
    ),
    "recover": _command(
        "cli_recover",
        "recover",
        "On a new machine, with the key: copy the repository back from a destination's copy, put back "
        "the event log from its newest encrypted copy there (checked against its chain), and rebuild "
        "the jobs, snapshots and settings from it.",
    ),
    "repair-log": _command(
        "cli_jobs",
        "repair_log",
        "Set a damaged event log aside (nothing is deleted) and start a new one with the "
        "repository's snapshots; a log that reads whole is left alone.",
    ),
    "replay": _command(
        "cli_jobs",
        "replay",
        "Rebuild the job and snapshot tables from the event log, from its first event.",
    ),
    "scheduler": _command(
        "cli_serve",
        "scheduler_cmd",
        "Distributed mode: run the schedules alone (CAPSULE_BROKER_URL set; `capsule worker` "
        "processes run the jobs), until SIGTERM or Ctrl-C.",
    ),
    "schedules": _command(
        "cli_settings",
        "schedules",
        "Each schedule: when it last ran, how that went, and its next three due times.",
    ),
    "serve": _command(
        "cli_serve",
        "serve_cmd",
        "Run Capsule by itself: the schedules, the jobs (unless CAPSULE_BROKER_URL names a broker) "
        "and `GET /healthz`, until SIGTERM or Ctrl-C.",
    ),
    "settings": _command(
        "cli_settings",
        "settings",
        "What Capsule does by itself: schedules, time zone, retention, alerts.",
    ),
    "status": _command(
        "cli_jobs",
        "status",
        "What Capsule is doing, when each kind was last backed up, and whether that is too long "
        "ago; how much the repository holds, and the last prune.",
    ),
    "sync": _command(
        "cli_sync",
        "sync",
        "Copy to DESTINATION (every enabled destination when none is named) each object of the local "
        "repository it lacks: config and keys, then packs, then index files, then snapshots, so the "
        "copy is a complete repository at every moment.",
    ),
    "tag": _command("cli_forget", "tag", "Add or remove a snapshot's tags."),
    "worker": _command(
        "cli_jobs",
        "worker",
        "Run job steps: from CAPSULE_BROKER_URL, or (without it) the unfinished jobs of this machine.",
    ),
}
"""The commands of the `cli_*.py` modules: where each is defined, and the first sentence of its
help (tests/unit/test_cli_help.py holds each to the command's own)."""


def show_version(ctx: click.Context) -> None:
    """`capsule --version`: the package's version, and whether the native page hasher is in use
    (an install without a C compiler works, with more processor time for each database backup)."""
    from capsule.adapters.repository.crypto import page_hasher  # noqa: PLC0415 - not for `--help`

    click.echo(f"capsule {capsule_version()}")
    click.echo(f"page hasher: {page_hasher()}")
    ctx.exit()


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    prepare=add_log_options,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _, value: show_version(ctx) if value and not ctx.resilient_parsing else None,
    help="Show the version, how this install hashes database pages, and exit.",
)
@click.option("--log-level", type=click.Choice(list(LEVELS)), help=LOG_LEVEL_HELP)
@click.option("--log-format", type=click.Choice(FORMATS), help=LOG_FORMAT_HELP)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """Capsule: backups of a point-of-sale server's database, verified before every restore.

    Paths come from CAPSULE_DATABASE, CAPSULE_REPOSITORY, CAPSULE_HOME and CAPSULE_KEY_FILE (or
    capsule.toml). Exit codes: 0 ok, 1 failed, 2 usage, 3 damage found, or a backup completed with
    warnings, 4 locked, 5 attention needed (`status --check`), 130 interrupted.
    """
    from capsule.orchestrator.settings import SettingsInvalid  # noqa: PLC0415 - not for `--help`

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
@from_option
@pass_ctx
def cat(obj: Context, snapshot: str, path: str, source: str | None) -> None:
    """Write one file of SNAPSHOT to stdout, e.g. `capsule cat latest-files shoes/red.jpg > red.jpg`."""
    from capsule.orchestrator.usecases.snapshots import CatFile, read_file  # noqa: PLC0415

    run(lambda: read_file(obj.settings, CatFile(snapshot, path, source), render.data_stdout))


@cli.command("ls")
@click.argument("snapshot")
@click.argument("path", default="")
@click.option("--json", "as_json", is_flag=True, help="Print the folder's items as JSON on stdout.")
@from_option
@pass_ctx
def ls_cmd(obj: Context, snapshot: str, path: str, as_json: bool, source: str | None) -> None:
    """List a folder of SNAPSHOT (its top by default): type and mode, size, time and name, e.g.
    `capsule ls latest-files shoes`. A database snapshot holds one item, the database."""
    from capsule.orchestrator.usecases.snapshots import ListFolder, list_folder  # noqa: PLC0415

    run(lambda: render.folder_listing(list_folder(obj.settings, ListFolder(snapshot, path, source)), as_json))


@cli.command()
@click.argument("pattern")
@click.option(
    "--snapshot",
    metavar="SNAPSHOT",
    help="Search only this snapshot (`latest-files`, an id or a prefix); by default every one, newest first.",
)
@click.option("-i", "--ignore-case", is_flag=True, help="Match upper and lower case alike.")
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON on stdout.")
@from_option
@pass_ctx
def find(  # noqa: PLR0917 (click passes options by position)
    obj: Context, pattern: str, snapshot: str | None, ignore_case: bool, as_json: bool, source: str | None
) -> None:
    """Find files by PATTERN, a glob on the name (`red*.jpg`) or, with a `/`, on the whole path
    (`shoes/*.jpg`), in every snapshot: each match with its snapshot, time and size."""
    from capsule.orchestrator.usecases.snapshots import FindFiles, find_files  # noqa: PLC0415

    request = FindFiles(pattern, snapshot, ignore_case, source)
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


add_log_options(cli)


def main() -> None:
    cli(prog_name="capsule")
