"""What a person sees at a terminal: `capsule` runs under a real pseudo-terminal (stdin, stdout and
stderr all on it, as in a shell), and the test reads every byte the terminal received."""

from __future__ import annotations

import json
import os
import pty
import re
import stat
import subprocess
from importlib.metadata import version

import pytest

from capsule.adapters.repository.crypto import page_hasher
from tests.integration.helpers import CAPSULE, Shop, is_json_line

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def on_terminal(shop: Shop, *args: str, env: dict[str, str | None] | None = None) -> tuple[int, str]:
    """Run `capsule ARGS` with a pseudo-terminal for stdin, stdout and stderr; its exit code and text."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CAPSULE, *args],
            cwd=shop.root,
            env=shop.env(env),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
        )
        os.close(terminal)
        terminal = -1
        received = b""
        while True:
            try:
                block = os.read(controller, 65536)
            except OSError:  # EIO: every end of the terminal is closed
                break
            if not block:
                break
            received += block
        code = proc.wait(timeout=120)
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    text = received.decode(errors="replace")
    assert "Traceback" not in text, text
    return code, text


def log_lines(shop: Shop) -> list[dict[str, object]]:
    path = shop.home / "logs" / "capsule.log"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_backup_at_a_terminal_shows_its_result_and_the_log_goes_to_a_private_file(shop: Shop) -> None:
    code, text = on_terminal(shop, "backup")

    assert code == 0, text
    assert "Snapshot " in text
    assert not TIMESTAMP.search(text), text
    assert "step completed" not in text and "backup requested" not in text
    log = shop.home / "logs" / "capsule.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    events = [e["event"] for e in log_lines(shop)]
    assert "database backed up" in events and "step completed" in events


def test_an_error_at_a_terminal_is_said_once(shop: Shop) -> None:
    missing = shop.root / "no-such.db"

    code, text = on_terminal(shop, "backup", env={"CAPSULE_DATABASE": str(missing)})

    assert code == 1, text
    assert text.count(f"the database {missing} does not exist") == 1, text
    assert not TIMESTAMP.search(text), text
    failed = [e for e in log_lines(shop) if e["event"] == "step failed"]
    assert failed and f"the database {missing} does not exist" in str(failed[0]["error"])


@pytest.mark.slow
def test_log_options_work_after_the_command_name(shop: Shop) -> None:
    code, text = on_terminal(shop, "backup", "--log-format", "json")
    assert code == 0, text
    assert any(is_json_line(line.strip()) for line in text.splitlines()), text

    quiet = shop.run("backup", "--log-level", "warning", expect=0)
    assert not [line for line in quiet.stderr.splitlines() if '"info"' in line], quiet.stderr

    both = shop.run("--log-format", "json", "backup", "--log-level", "warning", expect=0)
    assert "backed up" not in both.stderr


def test_version_names_the_installed_package_and_how_it_hashes_pages(shop: Shop) -> None:
    proc = shop.run("--version", expect=0)

    first, second = proc.stdout.strip().split("\n")
    assert first == f"capsule {version('capsule-backup')}"
    # The README's install builds the native hasher; this machine's processor can run it.
    assert second == f"page hasher: {page_hasher()}"
    assert second.startswith(("page hasher: native", "page hasher: one call per page ("))


def test_a_backup_whose_stderr_reader_goes_away_still_completes(shop: Shop) -> None:
    """`capsule backup 2>&1 | head -1`: once the reader has gone, log lines go to the file alone."""
    proc = subprocess.Popen(
        [*CAPSULE, "backup", "--json"],
        cwd=shop.root,
        env=shop.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stdout is not None
    proc.stderr.close()  # nobody reads the log lines any more
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the backup did not end once its stderr was closed") from None

    assert proc.returncode == 0
    assert json.loads(out)["snapshot_id"] == shop.snapshots()[0]["snapshot_id"]
    assert "database backed up" in [e["event"] for e in log_lines(shop)]
