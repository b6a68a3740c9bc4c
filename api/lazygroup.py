"""A click group whose commands live in modules loaded only when one of them is asked for.

`capsule --help` lists every command from a table of names and one-line summaries; a command's
module (and what it imports: settings, use cases, renderers) loads when that command runs or its
own `--help` is asked for. The summaries in the table are held to the commands' own help by
tests/unit/test_cli_help.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class LazyCommand:
    """Where a command is defined, and the first sentence of its help as `capsule --help` shows it."""

    module: str
    attribute: str
    summary: str


class LazyGroup(click.Group):
    """A group that loads a command from `lazy` when it is first looked up, then hands it to
    `prepare` (which may add options) and keeps it as if it had been added."""

    def __init__(
        self,
        *args: object,
        lazy: Mapping[str, LazyCommand] | None = None,
        prepare: Callable[[click.Command], None] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy: dict[str, LazyCommand] = dict(lazy or {})
        self.prepare = prepare

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.load(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def load(self, name: str) -> click.Command:
        where = self.lazy[name]
        command = getattr(importlib.import_module(where.module), where.attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{where.module}.{where.attribute} is not a click command")
        if self.prepare is not None:
            self.prepare(command)
        return command

    def load_all(self) -> None:
        """Load every command (for a test or a tool that walks them all)."""
        for name in self.lazy:
            self.get_command(click.Context(self), name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click's own, with a command not loaded yet stood in for by its summary: click shortens
        # a summary to the terminal's width the same way it shortens a command's help.
        stand_ins = {
            name: self.commands.get(name) or click.Command(name, help=lazy.summary)
            for name, lazy in self.lazy.items()
        }
        shown = [
            (name, command)
            for name in self.list_commands(ctx)
            if (command := self.commands.get(name) or stand_ins.get(name)) is not None and not command.hidden
        ]
        if not shown:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in shown)
        rows = [(name, command.get_short_help_str(limit)) for name, command in shown]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
