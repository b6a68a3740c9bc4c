"""The adapters' logger writes through structlog as `structlog.get_logger` would, loading it late."""

from __future__ import annotations

from structlog.testing import capture_logs

from capsule.adapters.logs import get_logger


def test_a_line_reaches_structlog_with_its_level_and_fields() -> None:
    log = get_logger("capsule.test")
    with capture_logs() as lines:
        log.warning("index cache not written", folder="/nowhere")
        log.debug("index cache not used", reason="stale")
    assert lines == [
        {"event": "index cache not written", "folder": "/nowhere", "log_level": "warning"},
        {"event": "index cache not used", "reason": "stale", "log_level": "debug"},
    ]
