"""Whether the event log's database is already as `create_schema` and `create_projection_schema`
leave it, so that a process opening it may skip them.

Those two make sure of every table, guard, the chain's origin and every checkpoint: some forty
statements in two write transactions, in every process that opens the log. This asks the database's
catalog in one query, then reads the chain's origin and the checkpoints, in one read transaction.
Anything missing or of another shape (a log an older Capsule made, or one changed around Capsule)
answers False, and the two then run and make their changes as they always did.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError

from capsule.orchestrator.db import for_reading
from capsule.orchestrator.eventstore.schema import (
    POSTGRESQL_GUARD_BODY,
    POSTGRESQL_GUARDS,
    SQLITE_GUARD_NAMES,
    event_chain_origin,
    metadata_obj,
)
from capsule.orchestrator.projections.tables import PROJECTIONS, projection_checkpoints

SQLITE_CATALOG = """
SELECT m.type, m.name, p.name FROM sqlite_master AS m
LEFT JOIN pragma_table_info(m.name) AS p WHERE m.type IN ('table', 'trigger')
"""
# The tables' columns, the triggers on them and the guards' function, in the schema that
# unqualified names resolve to (where `create_schema` made them).
POSTGRESQL_CATALOG = """
SELECT 'table', r.relname::text, a.attname::text FROM pg_attribute AS a
JOIN pg_class AS r ON r.oid = a.attrelid JOIN pg_namespace AS n ON n.oid = r.relnamespace
WHERE n.nspname = current_schema() AND r.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'trigger', t.tgname::text, NULL FROM pg_trigger AS t
JOIN pg_class AS r ON r.oid = t.tgrelid JOIN pg_namespace AS n ON n.oid = r.relnamespace
WHERE n.nspname = current_schema() AND NOT t.tgisinternal
UNION ALL
SELECT 'function', p.proname::text, p.prosrc FROM pg_proc AS p
JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.proname = 'events_refuse_change'
"""


def schema_in_place(engine: Engine) -> bool:
    """Whether `create_schema` (with a chain key) and `create_projection_schema` would change
    nothing: every table of `metadata_obj` there with exactly its columns, the append-only guards
    in place, the chain begun and every read model's checkpoint recorded."""
    try:
        with for_reading(engine).connect() as conn, conn.begin():
            return _catalog_in_place(conn) and _rows_in_place(conn)
    except DBAPIError:
        return False  # `create_schema` meets it again, and says what is wrong


def _catalog_in_place(conn: Connection) -> bool:
    postgresql = conn.dialect.name == "postgresql"
    listed = conn.exec_driver_sql(POSTGRESQL_CATALOG if postgresql else SQLITE_CATALOG).all()
    columns: dict[str, set[str]] = {}
    triggers: set[str] = set()
    functions: list[str] = []
    for kind, name, detail in listed:
        if kind == "table" and detail is not None:
            columns.setdefault(name, set()).add(detail)
        elif kind == "trigger":
            triggers.add(name)
        elif kind == "function":
            functions.append(detail)
    expected = {table.name: {column.name for column in table.columns} for table in metadata_obj.sorted_tables}
    if any(columns.get(name) != wanted for name, wanted in expected.items()):
        return False
    if postgresql:
        # `create_schema` replaces the function each time: in place only if it is this Capsule's.
        return triggers >= set(POSTGRESQL_GUARDS) and functions == [POSTGRESQL_GUARD_BODY]
    return triggers >= SQLITE_GUARD_NAMES


def _rows_in_place(conn: Connection) -> bool:
    origins = conn.execute(select(func.count()).select_from(event_chain_origin)).scalar_one()
    recorded = set(conn.execute(select(projection_checkpoints.c.name)).scalars())
    return origins == 1 and {table.name for table in PROJECTIONS} <= recorded
