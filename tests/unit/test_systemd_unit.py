"""The systemd unit the guide ships (docs/capsule.service) starts `capsule serve` with options it
has, and gives a running step its whole grace period before systemd's SIGKILL."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import click

from capsule.api.cli import cli
from capsule.orchestrator.usecases.serve import GRACE_SECONDS

UNIT = Path(__file__).resolve().parents[2] / "docs" / "capsule.service"
GUIDE = UNIT.with_name("backup-restore-guide.md")


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_exec_start_runs_capsule_serve_with_options_it_has() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    serve = cli.get_command(click.Context(cli), "serve")
    assert serve is not None
    known = {name for param in serve.params for name in param.opts}

    assert Path(argv[0]).name == "capsule" and argv[1] == "serve"
    given = [word for word in argv[2:] if word.startswith("--")]
    assert given and set(given) <= known
    grace = argv[argv.index("--grace-seconds") + 1]
    assert float(grace) == GRACE_SECONDS


def test_systemd_waits_longer_than_the_grace_before_it_kills() -> None:
    service = unit()["Service"]

    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > GRACE_SECONDS
    assert service["User"] and service["WorkingDirectory"] and service["Restart"]


def test_the_guide_shows_the_unit_as_shipped() -> None:
    shipped = [line for line in UNIT.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"]
    guide = GUIDE.read_text(encoding="utf-8")
    shown = guide[guide.index("```ini\n") + len("```ini\n") :]
    shown = shown[: shown.index("```")]
    assert [line for line in shown.splitlines() if line] == shipped
