"""Fixtures for tests of Capsule's own database: the same test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from capsule.orchestrator.db import default_event_store_url, make_engine
from capsule.orchestrator.eventstore import create_schema
from tests.servers import require_postgres


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the test PostgreSQL database, for creating and dropping a schema per test."""
    engine = make_engine(require_postgres())
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def event_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new PostgreSQL schema dropped after the test.

    The PostgreSQL URL sets the connections' search_path to the test's own schema, so that tests
    running at the same time, here or on another checkout, never see each other's tables.
    """
    if request.param == "sqlite":
        yield default_event_store_url(tmp_path / "capsule")
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    schema = f"capsule_test_{secrets.token_hex(6)}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def event_store_engine(event_store_url: str) -> Iterator[Engine]:
    """An engine on `event_store_url` with the event store's tables created."""
    engine = make_engine(event_store_url)
    create_schema(engine)
    yield engine
    engine.dispose()
