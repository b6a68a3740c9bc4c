"""The HTTP front door of `capsule serve`: a FastAPI app on uvicorn, in a thread of the service.

`create_app(service)` builds the app; every endpoint hangs off it (today `GET /healthz`; the HTTP
API and the admin page next). A route parses, asks the service or a use case, and renders, as a
click command does.

FastAPI and uvicorn are loaded when the front door opens, not when the CLI starts: every other
command starts without them.

`open_front_door(host, port)` binds the address before the service starts anything, so that a
port already taken is one line and exit 2, not a traceback after the first backup began. The
thread runs uvicorn without its signal handlers: the main thread hears SIGTERM and stops the
service, the front door last.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from capsule.api.common import capsule_version
from capsule.api.vocabulary import machine
from capsule.domain.errors import CapsuleError, Category

if TYPE_CHECKING:
    from fastapi import FastAPI

    from capsule.orchestrator.service import Health, Service

STARTUP_SECONDS = 10.0
"""Longest the front door may take to answer once its thread started."""
SHUTDOWN_SECONDS = 5.0


class CannotListen(CapsuleError):
    """Raised when the HTTP address cannot be bound: the port is taken, or the host is not this machine's."""

    category = Category.INVALID_SETTING


def health_doc(health: Health) -> dict[str, Any]:
    """`GET /healthz`'s body: times in the one JSON vocabulary (RFC 3339, UTC, `Z`)."""
    doc = {
        "status": "ok" if health.healthy else "unhealthy",
        "version": capsule_version(),
        "started_at": health.started_at,
        "scheduler": {
            "alive": health.scheduler_alive,
            "last_tick_at": health.last_tick_at,
            "last_tick_error": health.last_tick_error,
        },
        "worker": {
            "alive": health.worker_alive,
            "mode": "embedded" if health.worker_alive is not None else "broker",
        },
    }
    result: dict[str, Any] = machine(doc)
    return result


def create_app(service: Service) -> FastAPI:
    """The app of one service process; later endpoints are added here."""
    from fastapi import FastAPI  # noqa: PLC0415 - every other command starts without loading it
    from fastapi.responses import JSONResponse  # noqa: PLC0415

    app = FastAPI(title="Capsule", version=capsule_version(), docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz", response_model=None)
    def healthz() -> JSONResponse:
        """200 while the tick loop and the worker are alive, 503 otherwise (or while stopping)."""
        health = service.health()
        return JSONResponse(health_doc(health), status_code=200 if health.healthy else 503)

    return app


class HttpFrontDoor:
    """A bound listening address; `serving(service)` answers on it while the block runs."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"

    @contextmanager
    def serving(self, service: Service) -> Iterator[None]:
        import uvicorn  # noqa: PLC0415 - loaded by `serve` alone

        config = uvicorn.Config(
            create_app(service),
            log_config=None,
            access_log=False,  # a monitor polling /healthz would fill the log
            lifespan="off",
            timeout_graceful_shutdown=int(SHUTDOWN_SECONDS),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self.sock]}, name="http", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield
        finally:
            server.should_exit = True
            thread.join(timeout=SHUTDOWN_SECONDS + 1)

    def close(self) -> None:
        self.sock.close()


def open_front_door(host: str, port: int) -> HttpFrontDoor:
    """Bind `host:port` (port 0: any free one); CannotListen says what to do when it cannot."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise CannotListen(
            f"cannot listen on {host}: no such address ({e.strerror}); give another with --host or "
            "CAPSULE_HTTP_HOST"
        ) from e
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise CannotListen(_why_not(host, port, e)) from e
    sock.set_inheritable(False)
    return HttpFrontDoor(sock, host)


def _why_not(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another `capsule serve`?); stop that one, or "
            "give another port with --port or CAPSULE_HTTP_PORT"
        )
    if error.errno == errno.EACCES:
        return f"port {port} needs more rights than this user has; give a port above 1023 with --port"
    return f"cannot listen on {host}:{port} ({error.strerror}); give another --host or --port"
