"""The exit-code lists of the README, the guide and `capsule --help` say what the table says."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from capsule.api.cli import cli
from capsule.api.exitcodes import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]


def inline_list(text: str) -> dict[int, str]:
    """`Exit codes: 0 ok, 1 failed (why), 3 damage found.` as {code: what follows it}."""
    found = re.search(r"Exit codes: (.*?)\.(?:\s|$)", " ".join(text.split()))
    assert found, "no `Exit codes:` list"
    items = re.split(r",\s+(?=\d+\s)", found.group(1))
    return {int(code): meaning for code, meaning in (item.split(" ", 1) for item in items)}


def guide_table() -> dict[int, str]:
    text = (ROOT / "docs" / "backup-restore-guide.md").read_text(encoding="utf-8")
    section = text.split("## 11. Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", section, re.M)}


def readme_list() -> dict[int, str]:
    return inline_list((ROOT / "README.md").read_text(encoding="utf-8"))


def cli_help_list() -> dict[int, str]:
    return inline_list(cli.get_help(click.Context(cli, info_name="capsule")))


@pytest.mark.parametrize("listed", [readme_list, guide_table, cli_help_list], ids=lambda f: f.__name__)
def test_a_documented_exit_code_list_matches_the_table(listed):
    documented = listed()
    assert sorted(documented) == sorted(EXIT_CODES.meanings)
    for code, meaning in documented.items():
        assert meaning.startswith(EXIT_CODES.meanings[code]), f"exit code {code} is documented as {meaning!r}"


def test_the_table_lists_every_code_a_command_can_end_with():
    codes = {EXIT_CODES.ok, EXIT_CODES.usage, EXIT_CODES.interrupted, EXIT_CODES.warnings}
    codes.add(EXIT_CODES.attention)
    codes |= set(EXIT_CODES.by_category.values())
    assert set(EXIT_CODES.meanings) == codes
