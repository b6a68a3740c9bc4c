"""What the event store's driver errors become when the database reports damage or a full disk.

The SQLite cases run on real damaged files in tests/e2e/test_damaged_event_log.py; PostgreSQL's are
built here from psycopg's own error classes, as the driver raises them.
"""

from __future__ import annotations

import psycopg.errors
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InternalError, OperationalError

from capsule.domain.errors import Category
from capsule.orchestrator.db import describe_failure
from capsule.orchestrator.errors import EventLogDamaged, EventLogDiskFull

URL = make_url("postgresql+psycopg://capsule:s3cret-pw@db.shop.lan/capsule")


def raised_by_driver(orig: Exception, wrapper: type[DBAPIError]) -> DBAPIError:
    return wrapper("SELECT * FROM events", {}, orig)


@pytest.mark.parametrize(
    "orig",
    [
        psycopg.errors.DataCorrupted("invalid page in block 7 of relation base/16384/16385"),
        psycopg.errors.IndexCorrupted('index "events_pkey" contains unexpected zero page'),
    ],
)
def test_damage_postgresql_reports_is_the_servers_to_repair(orig: Exception) -> None:
    error = describe_failure(raised_by_driver(orig, InternalError), URL)

    assert isinstance(error, EventLogDamaged) and error.category is Category.DAMAGED
    assert "database server's work" in str(error) and str(orig) in str(error)
    assert "repair-log" not in str(error) and "s3cret-pw" not in str(error)


def test_a_full_disk_under_postgresql_is_reported_as_a_full_disk() -> None:
    orig = psycopg.errors.DiskFull('could not extend file "base/16384/16385": No space left on device')

    error = describe_failure(raised_by_driver(orig, OperationalError), URL)

    assert isinstance(error, EventLogDiskFull)
    assert "no disk space left" in str(error) and "cannot be reached" not in str(error)
