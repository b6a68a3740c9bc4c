"""structlog set-up: where the structured log goes, so that a person at a terminal reads only
Capsule's answers.

- A file under CAPSULE_HOME (`logs/capsule.log`, one JSON object a line, rotated by size) receives
  every line, whoever runs the command.
- stderr receives the same lines too when nobody reads it as a person (a pipe, cron, systemd), or
  when `--log-format json` or `console` asks for them. On a terminal it otherwise holds only the
  progress bar and the one-line error: a log line would run into the bar and repeat the error.

structlog itself takes longer to load than `capsule status` takes to answer, and a command that
logs nothing never needs it: `configure` sets it up at once if it is loaded, and otherwise the
moment something imports it, before that module can write a line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "console", "json")

SECRET_KEYS = ("passphrase", "secret", "token", "password", "key_material")

LOG_FILE = Path("logs") / "capsule.log"
"""Under CAPSULE_HOME."""
LOG_FILE_BYTES = 5 * 1024 * 1024  # a file this size is renamed capsule.log.1, and so on
LOG_FILES_KEPT = 3  # capsule.log.1 .. .3; the oldest is removed

_file = logging.getLogger("capsule.logfile")
_file.propagate = False
_file.setLevel(logging.DEBUG)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(s in key.lower() for s in SECRET_KEYS):
            event[key] = "<redacted>"
    return event


class _LogFile(logging.Handler):
    """The log file, rotated by size. The file and its folder are made, and the standard library's
    rotating handler (which loads `socket` and `pickle` with it) is loaded, at the first line
    written: a command that logs nothing (`--help`, `status`, a bad setting) neither loads it nor
    leaves anything in CAPSULE_HOME."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.opened: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.opened is None:
            self.opened = _rotating_file(self)
        self.opened.handle(record)

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()
        super().close()


def _rotating_file(owner: _LogFile) -> logging.Handler:
    import logging.handlers  # noqa: PLC0415 - only once a line is written (see `_LogFile`)

    class RotatingFile(logging.handlers.RotatingFileHandler):
        def _open(self) -> Any:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            return super()._open()

        def handleError(self, record: logging.LogRecord) -> None:
            # A home that cannot be written must not stop a backup; stderr says so once.
            self.close()
            _file.removeHandler(owner)
            shown = f"capsule: cannot write the log file {self.baseFilename}; going on without it"
            print(shown, file=sys.stderr)

    handler = RotatingFile(
        owner.path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILES_KEPT, encoding="utf-8", delay=True
    )
    handler.setFormatter(owner.formatter)
    return handler


def log_file(home: Path) -> Path:
    return home / LOG_FILE


def _use_file(home: Path | None) -> None:
    for old in list(_file.handlers):
        _file.removeHandler(old)
        old.close()
    if home is not None:
        handler = _LogFile(log_file(home))
        handler.setFormatter(logging.Formatter("%(message)s"))
        _file.addHandler(handler)


class _Outputs:
    """The last processor: writes the event to the log file as JSON and, rendered, to stderr.

    A log line must never fail the work it describes: once stderr cannot be written (its reader
    is gone, as when `| head` has read enough), lines go on to the file alone. A step whose log
    line raised BrokenPipeError was otherwise retried for ever.
    """

    def __init__(self, make_stderr: Callable[[], Any] | None) -> None:
        self.make_stderr = make_stderr
        self.stderr: Any = None
        self.lock = threading.Lock()

    def __call__(self, _: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        if _file.handlers:
            line = json.dumps(event, default=str)
            _file.log(LEVELS.get(method, logging.INFO), line)
        if self.stderr is not None:
            shown = self.stderr(_, method, event)
            with self.lock:
                try:
                    sys.stderr.write(shown + "\n")
                    sys.stderr.flush()
                except (OSError, ValueError):  # a closed pipe, or a closed file
                    self.stderr = None
        raise _structlog().DropEvent


def to_stderr(fmt: str, stderr_is_terminal: bool) -> bool:
    """Whether log lines go to stderr: when asked for, or when no person reads it."""
    return fmt in ("json", "console") or not stderr_is_terminal


_outputs: _Outputs | None = None


def lines_on_stderr() -> bool:
    """Whether log lines are being written to stderr (a progress bar there would be cut by them)."""
    return _outputs is not None and (_outputs.stderr is not None or _outputs.make_stderr is not None)


def configure(level: str = "info", fmt: str = "auto", home: Path | None = None) -> None:
    """Send log lines at `level` and above to the log file under `home` (None: no file) and, as
    `to_stderr` decides, to stderr: readable text with `console`, JSON lines otherwise."""
    terminal = sys.stderr.isatty()
    make_stderr: Callable[[], Any] | None = None
    if to_stderr(fmt, terminal):
        make_stderr = (
            (lambda: _structlog().dev.ConsoleRenderer(colors=terminal))
            if fmt == "console"
            else _json_renderer
        )
    with contextlib.suppress(OSError):
        _use_file(home)
    global _outputs  # noqa: PLW0603 - logging is one per process, as structlog's configuration is
    _outputs = _Outputs(make_stderr)
    threshold = LEVELS.get(level, logging.INFO)
    _when_loaded(lambda structlog: _configure_structlog(structlog, threshold))


def _configure_structlog(structlog: ModuleType, threshold: int) -> None:
    outputs = _outputs
    if outputs is not None and outputs.make_stderr is not None:
        outputs.stderr, outputs.make_stderr = outputs.make_stderr(), None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            outputs,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _json_renderer() -> Any:
    return _structlog().processors.JSONRenderer()


def _structlog() -> ModuleType:
    import structlog  # noqa: PLC0415 - loaded only once something logs (see the module's docstring)

    return structlog


def _when_loaded(apply: Callable[[ModuleType], None]) -> None:
    """Run `apply(structlog)` now if structlog is loaded, else right after it is first imported."""
    for finder in [f for f in sys.meta_path if isinstance(f, _ConfigureOnImport)]:
        sys.meta_path.remove(finder)
    loaded = sys.modules.get("structlog")
    if loaded is not None:
        apply(loaded)
    else:
        sys.meta_path.insert(0, _ConfigureOnImport(apply))


class _ConfigureOnImport:
    """An import hook that finds structlog as usual, then configures it once it has loaded."""

    def __init__(self, apply: Callable[[ModuleType], None]) -> None:
        self.apply = apply

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "structlog":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec  # noqa: PLC0415 - only on structlog's import

        spec = find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run, apply = spec.loader.exec_module, self.apply

        def exec_module(module: ModuleType) -> None:
            run(module)
            apply(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
