"""The adapters' logger writes through structlog as `structlog.get_logger` would, loading it late."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from capsule.adapters.logs import get_logger


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """structlog as it comes: a test that ran `configure` earlier in this process (test_log_file)
    left a level filter that drops the debug line."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def test_a_line_reaches_structlog_with_its_level_and_fields() -> None:
    log = get_logger("capsule.test")
    with capture_logs() as lines:
        log.warning("index cache not written", folder="/nowhere")
        log.debug("index cache not used", reason="stale")
    assert lines == [
        {"event": "index cache not written", "folder": "/nowhere", "log_level": "warning"},
        {"event": "index cache not used", "reason": "stale", "log_level": "debug"},
    ]
