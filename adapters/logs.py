"""A logger that loads structlog at its first line, not when its module is imported.

`capsule snapshots` opens the repository and logs nothing: the modules it reads through should not
load structlog for it (see `capsule.api.logging`, which configures structlog when it loads).
"""

from __future__ import annotations

from typing import Any


class Logger:
    """Stands for `structlog.get_logger(name)`: every method is looked up there when called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, method: str) -> Any:
        import structlog  # noqa: PLC0415 - the point of this class

        return getattr(structlog.get_logger(self.name), method)


def get_logger(name: str) -> Logger:
    return Logger(name)
