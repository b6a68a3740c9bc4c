"""The one vocabulary of `--json`: what every command calls the things it prints, and how it
writes them.

A snapshot is `snapshot_id`, a job `job_id` (never a bare `id`); every time is RFC 3339 in UTC to
the second with `Z`; warnings are `{"count", "items"}`. A snapshot or a job is described by one
function here, whichever command prints it. README.md ("JSON output") lists the fields, and
tests/e2e/test_json_vocabulary.py holds every command to that list.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from capsule.domain.manifest import Manifest


def rfc3339(value: datetime) -> str:
    """A time as every `--json` document writes it: RFC 3339, UTC, to the second, `Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_time_field(name: str) -> bool:
    return name == "time" or name.endswith("_at")


def machine(value: Any, name: str = "") -> Any:
    """`value` in the one vocabulary of `--json`: every time (a datetime, or the text of one in a
    field named `time` or `..._at`) in RFC 3339 UTC with `Z`, every path a string."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, str) and _is_time_field(name):
        try:
            return rfc3339(datetime.fromisoformat(value))
        except ValueError:
            return value
    if isinstance(value, dict):
        return {str(k): machine(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [machine(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def emit_json(value: Any) -> None:
    """Print one `--json` document on stdout."""
    click.echo(json.dumps(machine(value)))


def warnings_doc(count: int | None, items: list[str]) -> dict[str, Any]:
    """Warnings as every `--json` document names them: how many, and the first few."""
    return {"count": count or 0, "items": items}


def snapshot_doc(sid: str, m: Manifest, job_id: str | None = None) -> dict[str, Any]:
    """One snapshot in `--json` (`backup` and `snapshots` alike): the manifest without its
    entries, with its id, source identity, warnings and, for a database, the file names."""
    doc: dict[str, Any] = {"snapshot_id": sid}
    doc.update(json.loads(m.model_dump_json(exclude={"entries", "tree"})))
    doc["job_id"] = m.job_id or job_id
    doc["time"] = m.time
    doc["identity"] = m.source_identity().model_dump(mode="json")
    doc["warnings"] = warnings_doc(m.totals.warnings, list(m.warnings))
    if m.kind == "database":
        doc["files"] = [e.path for e in m.entries]
    return doc


def job_doc(row: dict[str, Any]) -> dict[str, Any]:
    """One job in `--json` (`jobs` and `status` alike): its row, with its warnings as everywhere."""
    doc = {k: v for k, v in row.items() if k != "warning_items"}
    if "warnings" in row:
        doc["warnings"] = warnings_doc(row["warnings"], str(row.get("warning_items") or "").splitlines())
    return doc


SNAPSHOT_ROW_IDENTITY = ("snapshot_id", "job_id", "kind", "source", "time")


def snapshot_row_doc(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A snapshot of the job tables in `--json`: the names and shape of `snapshot_doc`, with the
    totals the tables keep."""
    if row is None:
        return None
    doc = {k: row.get(k) for k in SNAPSHOT_ROW_IDENTITY}
    doc["totals"] = {k: v for k, v in row.items() if k not in SNAPSHOT_ROW_IDENTITY}
    return doc
