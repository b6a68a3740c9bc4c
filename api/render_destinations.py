"""How the destination commands show what their use cases returned."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.api.render import when
from capsule.api.vocabulary import emit_json
from capsule.domain.errors import Category

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.destinations import (
        DestinationChanged,
        DestinationList,
        DestinationView,
        ProbeResult,
    )

_DONE = {
    "added": "Added",
    "removed": "Removed",
    "consent_renewed": "Renewed the consent of",
    "enabled": "Enabled",
    "disabled": "Disabled",
    "bandwidth_set": "Set the bandwidth limit of",
    "resumed": "Resumed uploads to",
    "unchanged": "Nothing to change for",
}


def _doc(view: DestinationView) -> dict[str, Any]:
    return dataclasses.asdict(view)


def _kind(view: DestinationView) -> str:
    return "Google Drive" if view.kind == "gdrive" else "folder"


def listed(result: DestinationList, as_json: bool) -> None:
    if as_json:
        emit_json({"version": result.version, "destinations": [_doc(v) for v in result.destinations]})
        return
    if not result.destinations:
        click.echo("No destination yet: `capsule destinations add folder NAME PATH` adds one.")
        return
    width = max(len(v.name) for v in result.destinations)
    for v in result.destinations:
        state = "" if v.enabled else "  (disabled)"
        added = f"  added {when(v.added_at)} by {v.added_by}" if v.added_at else ""
        where = v.path or f"folder {v.folder_name}"
        limit = f"  at most {_rate(v.bandwidth)}" if v.bandwidth else ""
        click.echo(f"{v.name:<{width}}  {_kind(v):<12}  {where}{state}{limit}{added}")
    for v in result.destinations:
        if v.paused_until is not None and v.paused_until > datetime.now(UTC):
            click.echo(
                f"{v.name}: paused until {when(v.paused_until)}: {v.pause_reason}; backups meanwhile are "
                "stored locally, and the first after that catches up"
            )
        if v.needs_credentials is not None:
            click.echo(
                f"{v.name}: needs its credentials again: {v.needs_credentials}; run `capsule destinations "
                f"remove {v.name}`, then `capsule destinations add gdrive {v.name} --client-secrets FILE` "
                "(or copy secrets.key here from the old machine); nothing is copied there until then"
            )
        elif v.needs_consent is not None:
            click.echo(
                f"{v.name}: needs consent again: run `capsule destinations renew {v.name}` "
                f"({v.needs_consent}); nothing is copied there until then"
            )


def _rate(bytes_per_second: int) -> str:
    for unit, size in (("MiB/s", 1 << 20), ("KiB/s", 1 << 10)):
        if bytes_per_second >= size:
            return f"{bytes_per_second / size:g} {unit}"
    return f"{bytes_per_second} B/s"


def changed(result: DestinationChanged, as_json: bool) -> None:
    view = result.destination
    if as_json:
        emit_json(
            {
                "action": result.action,
                "version": result.version,
                "destination": _doc(view),
                "warning": result.warning,
            }
        )
        return
    click.echo(f"{_DONE[result.action]} the {_kind(view)} destination {view.name}: {view.location}.")
    if result.action == "removed":
        click.echo("What it holds stays where it is; Capsule no longer copies there.")
    elif result.action == "bandwidth_set":
        limit = f"at most {_rate(view.bandwidth)}" if view.bandwidth else "no limit"
        click.echo(f"Uploads to {view.name} now use {limit}.")
    elif result.action == "added":
        click.echo(f"`capsule destinations test {view.name}` checks that Capsule can write there.")
    if result.warning:
        click.echo(
            f"capsule: warning: {result.warning}. Until it is there, each backup says its copy to "
            f"{view.name} failed; the backups themselves go on.",
            err=True,
        )


def probed(result: ProbeResult, as_json: bool) -> int:
    if as_json:
        emit_json(dataclasses.asdict(result))
    elif result.ok:
        click.echo(f"{result.name}: ok, {result.message} ({result.seconds:.2f} s).")
    else:
        click.echo(f"{result.name}: {result.message}", err=True)
    if result.ok:
        return EXIT_CODES.ok
    return exit_code(Category(result.category or Category.UNKNOWN))


class TerminalPrompt:
    """Consent asked for at the terminal; everything said goes to standard error, so that `--json`
    keeps standard output for the result."""

    def show(self, url: str, port: int) -> None:
        say = _say
        say(
            "Open this address in a browser on any machine, sign in with the Google account that will "
            "hold the copies, and allow access:"
        )
        say("")
        say(f"  {url}")
        say("")
        say(
            f"Capsule listens on 127.0.0.1:{port} for Google's answer: with the browser on this machine, "
            f"or on yours through `ssh -L {port}:127.0.0.1:{port} <this server>`, it comes back by itself."
        )
        say(
            f"Otherwise the browser ends on a page that cannot be reached: copy its whole address (it "
            f"starts with http://127.0.0.1:{port}/) or the code in it, paste it here and press Enter."
        )
        click.echo("Address or code: ", err=True, nl=False)
        sys.stderr.flush()

    def pasted(self) -> Iterable[str]:
        return sys.stdin

    def received(self) -> None:
        _say("Google's answer received; trading it for Capsule's authorization.")


def _say(line: str) -> None:
    click.echo(line, err=True)


TERMINAL = TerminalPrompt()
