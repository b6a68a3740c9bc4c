"""The job commands of the CLI: jobs, status, audit, replay and worker.

`jobs` and `status` read the projections; `audit` reads the event log itself, the one record of who
did what and when; `replay` rebuilds the projections from the log.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from api.cli import Context, _human, cli, pass_ctx, run
from domain.errors import CapsuleError

if TYPE_CHECKING:
    from orchestrator.runtime import Runtime

# The event store, projections and Dramatiq take about a second to load: only the commands that use
# them import them, so `capsule snapshots` and the others stay quick.
JOB_STATUSES = ("queued", "pending", "running", "retrying", "completed", "failed", "cancelled")


def _runtime(obj: Context) -> Runtime:
    from orchestrator.runtime import Runtime  # noqa: PLC0415

    return Runtime(obj.settings)


def _when(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as e:
        raise CapsuleError(
            f"--since {text!r} is not a date or time; write it like 2026-11-25 or 2026-11-25T14:30"
        ) from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@cli.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--status",
    type=click.Choice(JOB_STATUSES),
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def jobs(obj: Context, limit: int, status: str | None, as_json: bool) -> None:
    """List backup and restore jobs, newest first."""

    def go() -> None:
        from orchestrator import projections  # noqa: PLC0415

        runtime = _runtime(obj)
        try:
            rows = projections.list_jobs(runtime.engine, limit=limit, status=status)
        finally:
            runtime.close()
        if as_json:
            click.echo(json.dumps(rows, default=_json_default))
            return
        if not rows:
            click.echo("No jobs yet. Run `capsule backup`.")
            return
        header = f"{'JOB':24}  {'TYPE':7}  {'STATUS':9}  {'STEP':8}  {'PROGRESS':>9}  "
        click.echo(header + f"{'REQUESTED (UTC)':19}  DETAIL")
        for r in rows:
            done, total = r.get("progress_done"), r.get("progress_total")
            shown = f"{100 * done / total:.0f}%" if done is not None and total else "-"
            detail = r.get("error") or r.get("snapshot_id") or r.get("queued_behind") or ""
            if r.get("queued_behind") and r.get("status") == "queued":
                detail = f"waits for {r['queued_behind']}"
            if r.get("warnings"):
                detail = f"{r['warnings']} warning(s); {detail}"
            step = r.get("current_step") or "-"
            click.echo(
                f"{r['job_id']:24}  {r['job_type']:7}  {r['status'] or '-':9}  {step:8}  "
                f"{shown:>9}  {_when(r.get('requested_at')):19}  {str(detail)[:80]}"
            )
            items = str(r.get("warning_items") or "").splitlines()
            for item in items:
                click.echo(f"{'':26}! {item}")
            if items and (r.get("warnings") or 0) > len(items):
                click.echo(f"{'':26}! ... `capsule audit --job {r['job_id']}` lists more")

    run(go)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(obj: Context, as_json: bool) -> None:
    """What Capsule is doing and when the last backup was made."""

    def go() -> None:
        from orchestrator import projections  # noqa: PLC0415

        runtime = _runtime(obj)
        try:
            recent = projections.list_jobs(runtime.engine, limit=200)
            snaps = projections.list_snapshots(runtime.engine, limit=1)
            position = runtime.store.last_position()
        finally:
            runtime.close()
        active = [r for r in recent if r.get("status") not in ("completed", "failed", "cancelled")]
        failed = [r for r in recent if r.get("status") == "failed"][:3]
        last = snaps[0] if snaps else None
        warned = _last_backup_warnings(recent, last)
        out = {
            "repository": str(obj.settings.repository),
            "database": str(obj.settings.database),
            "last_snapshot": last,
            "last_backup_warnings": warned,
            "active_jobs": active,
            "recent_failures": failed,
            "event_log_position": position,
        }
        if as_json:
            click.echo(json.dumps(out, default=_json_default))
            return
        click.echo(f"Repository: {obj.settings.repository}")
        if last:
            click.echo(
                f"Last snapshot: {str(last['snapshot_id'])[:12]} at {_when(last.get('time'))} UTC"
                + (f", {_human(last['bytes'])}" if last.get("bytes") else "")
            )
        else:
            click.echo("Last snapshot: none yet; run `capsule backup`")
        if warned:
            click.echo(f"Warnings of that backup: {warned['count']}")
            for item in warned["items"]:
                click.echo(f"  ! {item}")
        click.echo(f"Active jobs: {len(active)}")
        for r in active:
            click.echo(f"  {r['job_id']} {r['job_type']} {r['status']} {r.get('current_step') or ''}")
        for r in failed:
            click.echo(f"Failed: {r['job_id']} {r['job_type']}: {r.get('error')}")
        click.echo(f"Event log: {position} events")

    run(go)


def _last_backup_warnings(jobs: list[dict[str, Any]], last: dict[str, Any] | None) -> dict[str, Any] | None:
    """The warnings of the job that made the last snapshot (count, and the first few), if it had any."""
    if last is None:
        return None
    for row in jobs:
        if row.get("job_id") == last.get("job_id") and row.get("warnings"):
            return {"count": row["warnings"], "items": str(row.get("warning_items") or "").splitlines()}
    return None


def _summary(data: dict[str, Any]) -> str:
    keep = {
        k: v.replace("\n", " + ") if isinstance(v, str) else v  # the two sources of a backup of `all`
        for k, v in data.items()
        if k not in {"job_id", "result"} and v not in (None, "", [], {})
    }
    text = ", ".join(f"{k}={v}" for k, v in keep.items())
    text = text if len(text) <= 100 else text[:99] + "…"
    warnings = (data.get("result") or {}).get("warnings")
    if isinstance(warnings, dict) and warnings.get("count"):
        items = "; ".join(str(i) for i in warnings.get("items") or [])
        text += f"\n{'':88}{warnings['count']} warning(s): {items}"
    return text


@cli.command()
@click.option("--job", "job_id", help="Only the events of this job.")
@click.option("--since", help="Only events recorded at or after this time (UTC unless it says).")
@click.option(
    "--verify",
    is_flag=True,
    help="Check every event against its seal and the chain instead; exit 3 at the first that does not match.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def audit(obj: Context, job_id: str | None, since: str | None, verify: bool, as_json: bool) -> None:
    """Who did what and when, read from the event log."""
    if verify and (job_id or since):
        raise click.UsageError("--verify checks the whole log: leave out --job and --since")
    if verify:
        run(lambda: _verify(obj, as_json))
        return

    def go() -> None:
        start = _since(since)
        runtime = _runtime(obj)
        rows = []
        try:
            after = 0
            while batch := runtime.store.read_all(after, limit=5000):
                after = batch[-1].position
                for e in batch:
                    if (
                        job_id
                        and e.metadata.correlation_id != job_id
                        and not e.stream_id.endswith(f"-{job_id}")
                    ):
                        continue
                    if start and e.recorded_at < start:
                        continue
                    rows.append(e)
        finally:
            runtime.close()
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "position": e.position,
                            "recorded_at": e.recorded_at,
                            "actor": e.metadata.actor,
                            "stream": e.stream_id,
                            "version": e.version,
                            "type": e.type,
                            "data": e.data,
                        }
                        for e in rows
                    ],
                    default=_json_default,
                )
            )
            return
        if not rows:
            click.echo("No events match.")
            return
        for e in rows:
            click.echo(
                f"{_when(e.recorded_at)}  {e.metadata.actor:32}  {e.stream_id:32}  "
                f"{e.type:18}  {_summary(e.data)}"
            )

    run(go)


def _verify(obj: Context, as_json: bool) -> None:
    runtime = _runtime(obj)
    try:
        report = runtime.verify_log()
    finally:
        runtime.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), default=_json_default))
        return
    click.echo(f"Checked {report.events} events: each matches its seal and follows the one before it.")
    since = f"The log is chained since {_when(report.chained_at)} UTC"
    if report.chained_after:
        since += f"; the events up to position {report.chained_after} were written before and sealed then"
    click.echo(since + ".")
    if report.events:
        click.echo(f"Head: position {report.head_position}, chain {report.head}")
        click.echo(
            "Keep the head elsewhere: checked against it later, it shows whether events were removed "
            "from the end or the log was rewritten by someone holding its key."
        )


@cli.command()
@pass_ctx
def replay(obj: Context) -> None:
    """Rebuild the job and snapshot tables from the event log, from its first event."""

    def go() -> None:
        from orchestrator import projections  # noqa: PLC0415

        runtime = _runtime(obj)
        try:
            report = projections.replay(runtime.engine, runtime.store)
        finally:
            runtime.close()
        click.echo(f"Replayed {report.events} events in {report.seconds:.2f} s.")

    run(go)


def _count(snapshots: int) -> str:
    return f"{snapshots} snapshot" + ("" if snapshots == 1 else "s")


@cli.command("repair-log")
@pass_ctx
def repair_log(obj: Context) -> None:
    """Set a damaged event log aside (nothing is deleted) and start a new one with the repository's
    snapshots; a log that reads whole is left alone."""

    def go() -> None:
        from orchestrator.logrepair import repair_log  # noqa: PLC0415
        from orchestrator.runtime import person  # noqa: PLC0415

        report = repair_log(obj.settings, actor=person())
        if report.reason is None:
            click.echo(f"The event log {report.log} is not damaged; nothing to do.")
            return
        click.echo(f"The event log {report.log} was damaged ({report.reason}).")
        aside = ", ".join(str(p) for p in report.set_aside_as)
        click.echo(f"It is set aside as {aside}; nothing was deleted.")
        click.echo(
            f"A new event log starts with the repair and the repository's {_count(report.snapshots)}; "
            "`capsule audit` shows them, and the old log's jobs stay in the file set aside."
        )
        for problem in report.problems:
            click.echo(f"Not recorded: {problem}", err=True)

    run(go)


@cli.command()
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--until-idle", is_flag=True, help="Exit once no unfinished job is left.")
@pass_ctx
def worker(obj: Context, threads: int, until_idle: bool) -> None:
    """Run job steps: from CAPSULE_BROKER_URL, or (without it) the unfinished jobs of this machine."""

    def go() -> None:
        from orchestrator.actors import build  # noqa: PLC0415

        runtime, dispatcher = build(obj.settings)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            with dispatcher.worker(threads, sweep_every=obj.settings.sweep_seconds):
                click.echo(f"Worker {runtime.worker_id} running; Ctrl-C stops it.", err=True)
                while not stop.wait(0.2):
                    if until_idle and not runtime.unfinished():
                        break
        except KeyboardInterrupt:
            pass
        finally:
            runtime.close()

    run(go)
