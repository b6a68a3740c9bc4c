"""The key commands: `capsule key list | add | remove | passwd | export | import`.

`capsule.api.cli` registers the group; this module does not import it. The use cases are imported
when a command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from capsule.api import render_keys
from capsule.api.common import Context, pass_ctx, run
from capsule.api.render_keys import NEW_PASSPHRASE_ENV

PASSPHRASE_FILE = click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Read the new passphrase from this file (else {NEW_PASSPHRASE_ENV}, else it is asked twice).",
)


@click.group()
def key() -> None:
    """The ways into the repository: key files and passphrases. Open with the key file, or with
    CAPSULE_PASSPHRASE."""


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON on stdout.")
@pass_ctx
def key_list(obj: Context, as_json: bool) -> None:
    """Every key: its id, type (key-file or passphrase), when and where it was made; `*` marks the
    one in use now (CAPSULE_PASSPHRASE's when given, else the key file's)."""
    from capsule.orchestrator.usecases.keys import list_keys  # noqa: PLC0415

    run(lambda: render_keys.key_list(list_keys(obj.settings), as_json))


@key.command("add")
@click.option("--passphrase", "with_passphrase", is_flag=True, help="Add a passphrase (asked as for passwd).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Add a key file, written here (it must not exist yet).",
)
@PASSPHRASE_FILE
@pass_ctx
def key_add(obj: Context, with_passphrase: bool, key_file: Path | None, passphrase_file: Path | None) -> None:
    """Add a way in: a passphrase, or a new key file."""
    from capsule.orchestrator.usecases.keys import add_key  # noqa: PLC0415

    if with_passphrase == (key_file is not None):
        raise click.UsageError("give exactly one of --passphrase or --key-file PATH")

    def go() -> None:
        phrase = render_keys.new_passphrase(passphrase_file, wanted=with_passphrase)
        render_keys.added(add_key(obj.settings, passphrase=phrase, key_file=key_file))

    run(go)


@key.command("remove")
@click.argument("key_id")
@pass_ctx
def key_remove(obj: Context, key_id: str) -> None:
    """Remove the key KEY_ID (or a unique prefix): whoever holds only it can no longer open the
    repository. The last key, and the one in use now, cannot be removed."""
    from capsule.orchestrator.usecases.keys import remove_key  # noqa: PLC0415

    run(lambda: render_keys.removed(remove_key(obj.settings, key_id)))


@key.command("passwd")
@click.argument("key_id", required=False)
@PASSPHRASE_FILE
@pass_ctx
def key_passwd(obj: Context, key_id: str | None, passphrase_file: Path | None) -> None:
    """Change the passphrase (KEY_ID: which one, when there are several). The new one is recorded
    before the old one is removed."""
    from capsule.orchestrator.usecases.keys import change_passphrase  # noqa: PLC0415

    run(
        lambda: render_keys.passwd(
            change_passphrase(obj.settings, render_keys.passphrase(passphrase_file), key_id)
        )
    )


@key.command("export")
@click.option("--paper", is_flag=True, help="Print the key as six lines to write down, on stdout.")
@click.option(
    "--to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a copy of the key file here (readable by its owner only).",
)
@click.option("--force", is_flag=True, help="With --to: replace a file already there.")
@pass_ctx
def key_export(obj: Context, paper: bool, to: Path | None, force: bool) -> None:
    """Export the key file: `--paper` prints it to write down (anyone with it and a copy of the
    backups can read them), `--to PATH` copies the file."""
    from capsule.orchestrator.usecases.keys import export_key_file, export_paper  # noqa: PLC0415

    if paper == (to is not None):
        raise click.UsageError("give exactly one of --paper or --to PATH")
    if to is not None:
        run(lambda: render_keys.exported_file(export_key_file(obj.settings, to, force=force)))
    else:
        run(lambda: render_keys.paper(export_paper(obj.settings)))


@key.command("import")
@click.option("--force", is_flag=True, help="Replace a different key file (it is kept beside, renamed).")
@pass_ctx
def key_import(obj: Context, force: bool) -> None:
    """Type a paper key back (asked line by line, or piped in): writes the key file, after
    checking each line and, when the repository is here, that the key opens it."""
    from capsule.orchestrator.usecases.keys import import_paper  # noqa: PLC0415

    run(lambda: render_keys.imported(import_paper(obj.settings, render_keys.paper_text(), force=force)))


COMMANDS = (key,)
