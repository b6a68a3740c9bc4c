"""Every command and every option of `capsule` says what it is for in `--help`."""

from __future__ import annotations

from collections.abc import Iterator

import click

from capsule.api.cli import cli


def walk(command: click.Command, name: str = "capsule") -> Iterator[tuple[str, click.Command]]:
    yield name, command
    if isinstance(command, click.Group):
        for sub_name, sub in sorted(command.commands.items()):
            yield from walk(sub, f"{name} {sub_name}")


def test_every_command_and_option_has_help_text() -> None:
    missing = []
    for name, command in walk(cli):
        if not (command.help or command.short_help):
            missing.append(name)
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{name} {param.opts[0]}")
    assert missing == []


def test_every_command_takes_the_log_options_after_its_name() -> None:
    without = [
        name
        for name, command in walk(cli)
        if not {"--log-level", "--log-format"} <= {o for p in command.params for o in p.opts}
    ]
    assert without == []
