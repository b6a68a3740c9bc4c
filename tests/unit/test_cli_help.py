"""Every command and every option of `capsule` says what it is for in `--help`."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from capsule.api.cli import COMMANDS, cli
from capsule.api.lazygroup import LazyGroup


def walk(command: click.Command, name: str = "capsule") -> Iterator[tuple[str, click.Command]]:
    yield name, command
    if isinstance(command, LazyGroup):
        command.load_all()
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


def top_help(group: click.Group, width: int) -> str:
    ctx = click.Context(group, info_name="capsule", terminal_width=width, max_content_width=width)
    return group.get_help(ctx)


def fresh_cli() -> LazyGroup:
    """The `capsule` group as the command line starts it: no command of the table loaded yet."""
    group = LazyGroup(
        name=cli.name,
        callback=cli.callback,
        params=cli.params,
        help=cli.help,
        lazy=COMMANDS,
        prepare=cli.prepare if isinstance(cli, LazyGroup) else None,
        context_settings=cli.context_settings,
    )
    for name, command in cli.commands.items():
        if name not in COMMANDS:
            group.add_command(command, name)
    return group


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_the_top_help_lists_every_command_as_click_would_with_all_loaded(width: int) -> None:
    """`capsule --help` shows the table's summaries before any command module loads; click's own
    listing of the loaded commands is the same text, at any terminal width."""
    group = fresh_cli()
    before = top_help(group, width)
    assert set(group.commands).isdisjoint(COMMANDS)
    group.load_all()
    formatter = click.HelpFormatter(width=width, max_width=width)
    click.Group.format_commands(group, click.Context(group, info_name="capsule"), formatter)
    listing = formatter.getvalue().rstrip("\n")
    assert listing.strip() and listing in before
    assert top_help(group, width) == before


def test_the_table_names_each_command_by_the_name_it_has() -> None:
    group = fresh_cli()
    for name, where in COMMANDS.items():
        command = group.get_command(click.Context(group), name)
        assert command is not None and command.name == name, where
        assert command.get_short_help_str(10_000) == where.summary
