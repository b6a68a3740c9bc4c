"""Reaching the database and broker servers that integration tests need.

The project rule: a test whose server is not reachable is skipped on a developer's machine and
fails in CI (CI=true), where a silently skipped suite would pass for the wrong reason.
"""

from __future__ import annotations

import os
import socket

import pytest
from sqlalchemy.engine import make_url

POSTGRES_URL_VARIABLE = "CAPSULE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_server(name: str, host: str, port: int, *, timeout: float = 2.0) -> None:
    """Return if something listens at host:port; otherwise skip the test, or fail it in CI."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        message = f"{name} is not reachable at {host}:{port} ({e})"
    if in_ci():
        pytest.fail(f"{message}; CI must run the tests that need it", pytrace=False)
    pytest.skip(message)


def postgres_url() -> str:
    """The PostgreSQL server for tests: CAPSULE_TEST_POSTGRES_URL, else the local `test` database."""
    return os.environ.get(POSTGRES_URL_VARIABLE) or DEFAULT_POSTGRES_URL


def require_postgres() -> str:
    """The test PostgreSQL URL, once its server is known to listen."""
    url = make_url(postgres_url())
    require_server("PostgreSQL", url.host or "127.0.0.1", url.port or 5432)
    return postgres_url()
