"""How `capsule sync` shows what each destination got."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.api.render import human
from capsule.api.vocabulary import emit_json
from capsule.domain.errors import Category

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.sync import DestinationSynced, Synced


def _doc(d: DestinationSynced) -> dict[str, Any]:
    return {
        "name": d.name,
        "ok": d.ok,
        "sent": d.sent,
        "sent_bytes": d.sent_bytes,
        "skipped": d.skipped,
        "sent_by_kind": d.sent_by_kind,
        "deleted": d.deleted,
        "message": d.error,
        "category": None if d.category is None else d.category.value,
        "event_log": d.event_log,
        "event_log_written": d.event_log_written,
    }


def synced(result: Synced, as_json: bool) -> int:
    if as_json:
        emit_json({"destinations": [_doc(d) for d in result.destinations]})
    for d in result.destinations:
        if not d.ok:
            click.echo(f"{d.name}: not copied: {d.error}", err=True)
        elif not as_json:
            sent = "nothing to send" if not d.sent else f"sent {d.sent} objects ({human(d.sent_bytes)})"
            deleted = f"; deleted {d.deleted} that prune or forget deleted here" if d.deleted else ""
            log = " Event log copied." if d.event_log_written else ""
            click.echo(f"{d.name}: {sent}; {d.skipped} already there{deleted}.{log}")
    if not result.failed:
        return EXIT_CODES.ok
    return exit_code(result.failed[0].category or Category.UNKNOWN)
