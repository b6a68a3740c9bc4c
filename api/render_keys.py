"""How the key commands talk with the person at the terminal: the passphrases and paper keys they
ask for, and what they show of what their use cases returned."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from capsule.api.render import when
from capsule.api.vocabulary import emit_json
from capsule.domain.errors import CapsuleError, Category

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.keys import (
        KeyAdded,
        KeyFileExported,
        KeyImported,
        KeyList,
        KeyRemoved,
        PaperExport,
        PassphraseChanged,
    )


NEW_PASSPHRASE_ENV = "CAPSULE_NEW_PASSPHRASE"  # noqa: S105 - the name of a variable, not its value


class PassphraseInvalid(CapsuleError):
    """Raised when a new passphrase is empty, or typed differently the second time."""

    category = Category.INVALID_INPUT


def passphrase(passphrase_file: Path | None) -> str:
    """The new passphrase: from --passphrase-file, else CAPSULE_NEW_PASSPHRASE, else asked twice
    at a terminal, else one line of standard input."""
    if passphrase_file is not None:
        phrase = passphrase_file.read_text().strip()
        where = f"the passphrase file {passphrase_file}"
    elif os.environ.get(NEW_PASSPHRASE_ENV):
        phrase, where = os.environ[NEW_PASSPHRASE_ENV], NEW_PASSPHRASE_ENV
    elif sys.stdin.isatty():
        phrase = click.prompt("New passphrase", hide_input=True, err=True)
        if click.prompt("The same again", hide_input=True, err=True) != phrase:
            raise PassphraseInvalid("the two passphrases differ; nothing was changed")
        where = "the passphrase typed"
    else:
        phrase, where = sys.stdin.readline().rstrip("\r\n"), "standard input"
    if not phrase.strip():
        raise PassphraseInvalid(f"{where} is empty; nothing was changed")
    return phrase


def paper_text() -> str:
    """The typed paper key: piped in whole, or asked line by line at a terminal."""
    if not sys.stdin.isatty():
        return sys.stdin.read()
    click.echo("Type the paper key's six lines (spaces and dashes may be left out):", err=True)
    lines: list[str] = []
    while len("".join(lines).replace("-", "").replace(" ", "")) < 72:
        line = click.prompt(f"line {len(lines) + 1}", err=True, default="", show_default=False)
        if not line.strip():
            break
        lines.append(line)
    return "\n".join(lines)


def new_passphrase(passphrase_file: Path | None, *, wanted: bool) -> str | None:
    """The new passphrase when one is `wanted` (as `passphrase` reads it), else None."""
    return passphrase(passphrase_file) if wanted else None


def key_list(result: KeyList, as_json: bool) -> None:
    if as_json:
        emit_json(
            [
                {
                    "key_id": k.key_id,
                    "type": k.type,
                    "created_at": k.created_at,
                    "hostname": k.hostname,
                    "current": k.current,
                }
                for k in result.keys
            ]
        )
        return
    click.echo(f"  {'ID':<8}  {'TYPE':<10}  {'CREATED':<19}  HOST")
    for k in result.keys:
        mark = "*" if k.current else " "
        click.echo(f"{mark} {k.key_id[:8]:<8}  {k.type:<10}  {when(k.created_at):<19}  {k.hostname}")
    click.echo("(* the key in use now: CAPSULE_PASSPHRASE's when given, else the key file's)")


def added(result: KeyAdded) -> None:
    if result.key_file is not None:
        click.echo(
            f"Added key {result.key_id[:8]}: a key file at {result.key_file}. Keep it away from this machine."
        )
    else:
        click.echo(f"Added key {result.key_id[:8]}: a passphrase.")


def removed(result: KeyRemoved) -> None:
    click.echo(f"Removed key {result.key_id[:8]} ({result.type}): it no longer opens the repository.")


def passwd(result: PassphraseChanged) -> None:
    click.echo(
        f"Passphrase changed: key {result.new_key_id[:8]} replaces {result.old_key_id[:8]}; "
        "the old passphrase no longer opens the repository."
    )


def paper(result: PaperExport) -> None:
    entry = f" (key {result.key_id[:8]})" if result.key_id else ""
    click.echo(f"# Capsule paper key for the repository {result.repository_prefix}...{entry}")
    click.echo("# Anyone who has this key and a copy of the backups can read them: keep it locked")
    click.echo("# away from the shop. On a new machine, type it back with `capsule key import`.")
    if result.key_id:
        click.echo(f"# Lost or seen by someone else? `capsule key remove {result.key_id[:8]}` revokes it.")
    click.echo("")
    for line in result.lines:
        click.echo(line)
    if not result.checked:
        click.echo("capsule: no repository here to check this key against; it was not checked", err=True)


def exported_file(result: KeyFileExported) -> None:
    click.echo(f"Wrote a copy of the key file to {result.path}. Keep it away from this machine.")


def imported(result: KeyImported) -> None:
    if result.set_aside is not None:
        click.echo(f"The key file that was in the way is kept at {result.set_aside}.")
    verb = "was already" if result.already_there else "is now"
    click.echo(f"The key {verb} in {result.key_file}.")
    if result.key_id is not None:
        click.echo(f"It opens the repository {result.repository_prefix}... (key {result.key_id[:8]}).")
    else:
        click.echo(
            f"No repository is here yet: the key will be checked when the repository "
            f"{result.repository_prefix}... is first opened (copy it into CAPSULE_REPOSITORY, then "
            "`capsule snapshots`)."
        )
