"""Opening the event log: a log already as this Capsule leaves it is only read (three statements,
no write transaction), on SQLite and on PostgreSQL; one an older Capsule made, or one changed
around Capsule, is brought up to date as before."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, inspect

from capsule.orchestrator import projections
from capsule.orchestrator.db import make_engine
from capsule.orchestrator.eventstore.schema import metadata_obj
from capsule.orchestrator.projections.tables import PROJECTIONS
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", repository=tmp_path / "repo", database=tmp_path / "pos.db")


def opened(settings: Settings) -> list[str]:
    """Open the log as every job's process does; the statements that took (before any work)."""
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement.strip())

    event.listen(Engine, "before_cursor_execute", count)
    try:
        Runtime(settings).close()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    return statements


def log_file(settings: Settings) -> Path:
    return settings.home / "events.db"


def test_a_log_in_place_is_only_read_at_start(settings: Settings) -> None:
    first = opened(settings)
    assert any(s.startswith("CREATE TABLE") for s in first)

    again = opened(settings)

    assert len(again) <= 4, again
    assert not any(s.startswith(("CREATE", "BEGIN IMMEDIATE", "INSERT", "DROP")) for s in again), again
    runtime = Runtime(settings)
    try:
        assert projections.schema_in_place(runtime.engine)
    finally:
        runtime.close()


CHANGES: dict[str, Callable[[sqlite3.Connection], object]] = {
    # A read model as an older Capsule made it: a column fewer.
    "jobs of an older shape": lambda c: c.execute("ALTER TABLE jobs DROP COLUMN warnings"),
    "a read model missing": lambda c: c.execute("DROP TABLE drill_proofs"),
    "a guard dropped": lambda c: c.execute("DROP TRIGGER events_refuse_delete"),
    "a checkpoint missing": lambda c: c.execute("DELETE FROM projection_checkpoints WHERE name = 'jobs'"),
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_log_an_older_capsule_made_or_changed_is_made_current(settings: Settings, change: str) -> None:
    opened(settings)
    with sqlite3.connect(log_file(settings)) as conn:
        CHANGES[change](conn)

    statements = opened(settings)

    assert any(s.startswith("BEGIN IMMEDIATE") for s in statements)
    with sqlite3.connect(log_file(settings)) as conn:
        triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        checkpoints = {r[0] for r in conn.execute("SELECT name FROM projection_checkpoints")}
        for table in metadata_obj.sorted_tables:
            columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{table.name}")')}
            assert columns == {c.name for c in table.columns}, table.name
    assert "events_refuse_delete" in triggers
    assert {t.name for t in PROJECTIONS} <= checkpoints
    assert len(opened(settings)) <= 4  # and in place from then on


def test_a_log_whose_chain_has_not_begun_is_chained(settings: Settings) -> None:
    """A log from before the chain: the event store's opening chains it, as before."""
    opened(settings)
    with sqlite3.connect(log_file(settings)) as conn:
        conn.execute("DROP TRIGGER event_chain_origin_refuse_delete")
        conn.execute("DELETE FROM event_chain_origin")

    opened(settings)

    with sqlite3.connect(log_file(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM event_chain_origin").fetchone()[0] == 1


def test_either_database_is_only_read_once_in_place(event_store_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", event_store_url=event_store_url)
    first = opened(settings)
    assert any(s.startswith("CREATE TABLE") for s in first)

    again = opened(settings)

    assert len(again) <= 4, again
    assert not any(
        s.startswith(("CREATE", "BEGIN IMMEDIATE", "INSERT", "DROP", "SELECT pg_advisory")) for s in again
    )
    runtime = Runtime(settings)
    try:
        with runtime.engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
    finally:
        runtime.close()
    assert {t.name for t in metadata_obj.sorted_tables} <= names


POSTGRESQL_CHANGES = {
    "jobs of an older shape": "ALTER TABLE jobs DROP COLUMN warnings",
    "a guard dropped": "DROP TRIGGER events_refuse_truncate ON events",
    "the guards' function of another Capsule": (
        "CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$"
        "BEGIN RAISE EXCEPTION 'no'; END $$"
    ),
}


@pytest.mark.parametrize("event_store_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("change", list(POSTGRESQL_CHANGES), ids=list(POSTGRESQL_CHANGES))
def test_a_postgresql_log_changed_is_made_current(event_store_url: str, tmp_path: Path, change: str) -> None:
    settings = Settings(home=tmp_path / "home", event_store_url=event_store_url)
    opened(settings)
    engine = make_engine(event_store_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(POSTGRESQL_CHANGES[change])
        assert not projections.schema_in_place(engine)

        statements = opened(settings)

        assert any(s.startswith("SELECT pg_advisory_xact_lock") for s in statements)
        assert projections.schema_in_place(engine)
    finally:
        engine.dispose()
