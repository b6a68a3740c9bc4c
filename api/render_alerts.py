"""How the alert commands show what their use cases returned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.api.render import when
from capsule.api.vocabulary import emit_json
from capsule.domain.errors import Category

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.alerts import AlertList, AlertView, DeliveryView, TestSent


def _delivery_doc(d: DeliveryView) -> dict[str, Any]:
    return {
        "notice": d.notice,
        "channel": d.channel,
        "target": d.target,
        "attempts": d.attempts,
        "delivered": d.delivered,
        "next_try_at": d.next_try_at,
        "error": d.error,
    }


def _alert_doc(a: AlertView) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id,
        "incident": a.incident,
        "reason": a.reason,
        "summary": a.summary,
        "raised_at": a.raised_at,
        "cleared_at": a.cleared_at,
        "cleared_summary": a.cleared_summary,
        "deliveries": [_delivery_doc(d) for d in a.deliveries],
    }


def _delivery_line(d: DeliveryView) -> str:
    head = f"    {d.notice} -> {d.channel} {d.target}: "
    if d.delivered:
        return head + f"delivered (try {d.attempts})"
    later = f", next try {when(d.next_try_at)}" if d.next_try_at else ", given up"
    return head + f"failed {d.attempts} time(s){later}: {d.error}"


def shown(listing: AlertList, as_json: bool) -> None:
    if as_json:
        emit_json(
            {"open": [_alert_doc(a) for a in listing.open], "recent": [_alert_doc(a) for a in listing.recent]}
        )
        return
    click.echo(f"Open incidents: {len(listing.open)}")
    for a in listing.open:
        click.echo(f"  {a.incident}, since {when(a.raised_at)}: {a.summary}")
        for d in a.deliveries:
            click.echo(_delivery_line(d))
    if not listing.recent:
        click.echo("No alert yet.")
        return
    click.echo("Recent:")
    for a in listing.recent:
        state = "open" if a.is_open else f"cleared {when(a.cleared_at)}"
        click.echo(f"  {when(a.raised_at)}  {a.incident}  ({state})  {a.summary}")


def tested(result: TestSent, as_json: bool) -> int:
    if as_json:
        emit_json(
            {
                "ok": result.ok,
                "targets": [
                    {"channel": c, "target": t, "delivered": e is None, "error": e}
                    for c, t, e in result.tries
                ],
            }
        )
    else:
        for channel, target, error in result.tries:
            click.echo(f"{channel} {target}: " + ("delivered" if error is None else f"FAILED: {error}"))
    return EXIT_CODES.ok if result.ok else exit_code(Category.UNAVAILABLE)
