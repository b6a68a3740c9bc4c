"""The log file under CAPSULE_HOME: JSON lines, private, rotated by size with a few files kept."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import structlog

from capsule.api import logging as capsule_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield
    capsule_logging.configure("info", "json", None)


def test_the_log_file_is_rotated_by_size_and_keeps_a_few_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capsule_logging, "LOG_FILE_BYTES", 10_000)
    old = os.umask(0o077)
    try:
        capsule_logging.configure("info", "json", tmp_path)
        log = structlog.get_logger("test")
        for n in range(400):
            log.info("a line", n=n, passphrase="hunter2", padding="x" * 100)
    finally:
        os.umask(old)

    folder = tmp_path / "logs"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["capsule.log", "capsule.log.1", "capsule.log.2", "capsule.log.3"]
    assert all(p.stat().st_size <= 10_000 for p in folder.iterdir())
    last = json.loads((folder / "capsule.log").read_text(encoding="utf-8").splitlines()[-1])
    assert (last["event"], last["n"], last["passphrase"]) == ("a line", 399, "<redacted>")
    assert stat.S_IMODE((folder / "capsule.log").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("fmt", "terminal", "expected"),
    [("auto", True, False), ("auto", False, True), ("json", True, True), ("console", True, True)],
)
def test_log_lines_reach_stderr_only_when_asked_or_nobody_reads_it(
    fmt: str, terminal: bool, expected: bool
) -> None:
    assert capsule_logging.to_stderr(fmt, terminal) is expected
