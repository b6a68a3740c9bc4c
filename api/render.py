"""How the CLI shows what a use case returned: lines on stdout (messages on stderr), or JSON.

Nothing here reads the repository or the event log: a renderer gets everything it shows in the
use case's result.
"""

from __future__ import annotations

import dataclasses
import stat
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from capsule.api.common import EXIT_DAMAGE
from capsule.api.exitcodes import EXIT_CODES
from capsule.api.logging import lines_on_stderr
from capsule.api.vocabulary import emit_json, job_doc, snapshot_doc, snapshot_row_doc, warnings_doc
from capsule.domain.errors import CapsuleError

if TYPE_CHECKING:
    from capsule.adapters.repository.verify import VerifyReport
    from capsule.domain.manifest import Entry, Manifest
    from capsule.orchestrator.eventstore import ChainReport
    from capsule.orchestrator.logrepair import LogRepair
    from capsule.orchestrator.projections import ReplayReport
    from capsule.orchestrator.usecases.backup import BackedUp
    from capsule.orchestrator.usecases.drill import Drilled
    from capsule.orchestrator.usecases.jobs import (
        AuditTrail,
        Cancelled,
        JobList,
        Status,
        WorkDone,
        WorkInterrupted,
    )
    from capsule.orchestrator.usecases.repair import Repaired
    from capsule.orchestrator.usecases.repository import IndexRebuilt, RepositoryCreated, Unlocked
    from capsule.orchestrator.usecases.restore import Restored
    from capsule.orchestrator.usecases.sample_shop import SamplePart, SampleShop
    from capsule.orchestrator.usecases.snapshots import FindResult, FolderListing, SnapshotListing


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def when(value: Any) -> str:
    """A time as people read it: this machine's local time, to the second."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return str(value.astimezone().strftime("%Y-%m-%d %H:%M:%S"))


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal that log lines are not written to; nothing
    otherwise (logs and --json stay clean, and no log line runs into the bar)."""
    if not enabled or not sys.stderr.isatty() or lines_on_stderr():
        yield None
        return
    bar: Any = None
    state = {"done": 0}

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
            bar.__enter__()
        bar.update(done - state["done"])
        state["done"] = done

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def data_stdout() -> BinaryIO:
    """Standard output for a file's bytes; a terminal is refused."""
    out = sys.stdout.buffer
    if out.isatty():
        raise CapsuleError("stdout is a terminal; send it to a file: capsule cat SNAPSHOT PATH > FILE")
    return out


# ---- the repository and its snapshots -----------------------------------------------------


def created(result: RepositoryCreated) -> None:
    if not result.created:
        click.echo(f"The repository at {result.repository} exists and its key opens it.")
        return
    click.echo(f"Created a repository at {result.repository}.")
    click.echo(
        f"Its key file is {result.key_file}. Keep a copy of it somewhere safe, away from this machine: "
        "without it (or the passphrase, if you set one) the backups cannot be read by anyone."
    )
    click.echo("To keep it on paper, in a safe: capsule key export --paper")


def backed_up(result: BackedUp, as_json: bool) -> int:
    """Show a backup's snapshots; the exit code is 3 if any of them has warnings."""
    rows = [snapshot_doc(s.snapshot_id, s.manifest, result.job_id) for s in result.snapshots]
    if as_json:
        doc = rows[0] if len(rows) == 1 else {"job_id": result.job_id, "snapshots": rows}
        emit_json({**doc, "uploads": result.uploads} if result.uploads else doc)
    else:
        for snapshot in result.snapshots:
            _print_snapshot(snapshot.snapshot_id, snapshot.manifest, result.job_id)
        for upload in result.uploads:
            click.echo(_upload_line(upload))
    warned = any(s.manifest.totals.warnings for s in result.snapshots)
    return EXIT_CODES.warnings if warned else EXIT_CODES.ok


def _upload_line(upload: dict[str, Any]) -> str:
    name, status = upload.get("destination"), upload.get("status")
    if status == "uploaded":
        deleted = f", {upload['deleted']} deleted (pruned here)" if upload.get("deleted") else ""
        sent = human(int(upload.get("sent_bytes") or 0))
        logged = " and the event log" if upload.get("event_log") else ""
        error = upload.get("event_log_error")
        missed = f" The event log was not copied: {error}." if error else ""
        return f"Copied to {name}: {upload.get('sent', 0)} new objects, {sent}{deleted}{logged}.{missed}"
    if status == "paused":
        until = upload.get("paused_until")
        return f"Not copied to {name}: paused until {until}; the first backup after that catches up."
    return f"Not copied to {name} ({status}): {upload.get('error')}; the next backup tries again."


def _print_snapshot(sid: str, m: Manifest, job_id: str) -> None:
    t = m.totals
    reused = ""
    if m.kind == "files":
        reused = f"{t.files} files, {t.read_files or 0} of them read (the others had not changed); "
    click.echo(
        f"Snapshot {sid[:12]} of {m.source}: {human(t.bytes)} in {t.duration_seconds:.1f} s; {reused}"
        f"{t.new_blobs} new of {t.blobs} chunks, repository grew by {human(t.stored_bytes)} (job {job_id})."
    )
    if t.warnings:
        what = "item(s) not backed up as they are" if m.kind == "files" else "warning(s)"
        click.echo(f"{t.warnings} {what}:", err=True)
        for line in m.warnings[:20]:
            click.echo(f"  {line}", err=True)
        if t.warnings > 20:
            click.echo(f"  ... and {t.warnings - 20} more; the backup's log names every one", err=True)


def snapshot_list(listing: SnapshotListing, as_json: bool) -> None:
    if as_json:
        rows = [snapshot_doc(sid, m) for sid, m in listing.snapshots]
        rows += [{"snapshot_id": d.name, "damaged": d.reason} for d in listing.damaged]
        emit_json(rows)
        return
    if not listing.snapshots and not listing.damaged:
        click.echo("No snapshot matches." if listing.filtered else "No snapshots yet. Run `capsule backup`.")
        return
    click.echo(f"{'ID':12}  {'TIME':19}  {'KIND':9}  {'SIZE':>10}  {'ADDED':>10}  SOURCE")
    for sid, m in listing.snapshots:
        identity = m.source_identity()
        source = identity.path if identity.host == listing.host else identity.describe()
        click.echo(
            f"{sid[:12]}  {when(m.time)}  "
            f"{m.kind + ('*' if m.full else ''):9}  {human(m.totals.bytes):>10}  "
            f"{human(m.totals.stored_bytes):>10}  {source}"
        )
    for d in listing.damaged:
        click.echo(f"{d.name[:12]}  DAMAGED: {d.reason}; `capsule verify` checks the repository")


def _entry_json(entry: Entry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": entry.path,
        "name": entry.path.rpartition("/")[2],
        "type": entry.type,
        "size": entry.size,
        "mode": f"{stat.S_IMODE(entry.mode):04o}",
        "mtime": _mtime(entry),
    }
    if entry.sha256:
        row["sha256"] = entry.sha256
    if entry.target is not None:
        row["target"] = entry.target
    return row


def _mtime(entry: Entry) -> datetime:
    return datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC)


def _entry_line(entry: Entry, name: str) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(entry.type, stat.S_IFREG)
    size = "-" if entry.type == "dir" else human(entry.size)
    shown = name + ("/" if entry.type == "dir" else "")
    if entry.target is not None:
        shown += f" -> {entry.target}"
    when_ = when(_mtime(entry))
    return f"{stat.filemode(kind | stat.S_IMODE(entry.mode))}  {size:>10}  {when_}  {shown}"


def folder_listing(listing: FolderListing, as_json: bool) -> None:
    m = listing.manifest
    if as_json:
        emit_json(
            {
                "snapshot_id": listing.snapshot_id,
                "time": m.time,
                "kind": m.kind,
                "source": m.source,
                "path": listing.path,
                "entries": [_entry_json(e) for e in listing.entries],
            }
        )
        return
    where = f"/{listing.path}" if listing.path else ""
    click.echo(f"Snapshot {listing.snapshot_id[:12]} of {m.source}{where}, {when(m.time)}:")
    if not listing.entries:
        click.echo("  (empty folder)")
    for entry in listing.entries:
        name = entry.path if entry.path == listing.path else entry.path.rpartition("/")[2]
        click.echo(_entry_line(entry, name))


def found(result: FindResult, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "snapshot_id": f.snapshot_id,
                "time": f.manifest.time,
                "kind": f.manifest.kind,
                "source": f.manifest.source,
                **_entry_json(e),
            }
            for f in result.found
            for e in f.entries
        ]
        emit_json(rows)
    elif not result.found:
        click.echo(f"Nothing matches {result.pattern!r} in {_count(result.searched)}.")
    else:
        # One line per version of a path: the newest snapshot that holds it, and how many older
        # ones hold it too (`--json` lists every snapshot).
        versions: dict[tuple[str, str, str | None, int], list[Any]] = {}
        for f in result.found:
            for e in f.entries:
                versions.setdefault((e.path, e.type, e.sha256, e.size), [f, e, 0])[2] += 1
        click.echo(f"{'SNAPSHOT':12}  {'TIME':19}  {'SIZE':>10}  PATH")
        for f, e, count in versions.values():
            size = "-" if e.type == "dir" else human(e.size)
            shown = e.path + ("/" if e.type == "dir" else "")
            older = f"  (also in {count - 1} older)" if count > 1 else ""
            click.echo(f"{f.snapshot_id[:12]}  {when(f.manifest.time):19}  {size:>10}  {shown}{older}")
        click.echo(
            f"{len(versions)} match(es) in {_count(len(result.found))} of {result.searched}; "
            "`capsule cat SNAPSHOT PATH > FILE` writes one file out.",
            err=True,
        )
    for line in result.unreadable:
        click.echo(f"Not searched: snapshot {line}", err=True)


def restored(result: Restored, as_json: bool = False) -> None:
    sid = result.snapshot_id
    if as_json:
        emit_json({**dataclasses.asdict(result), "kind": result.kind or "database"})
        return
    if result.in_place:
        click.echo(f"Restored snapshot {sid[:12]} into {result.database}.")
        click.echo(f"The database as it was before is saved at {result.safety_copy}.")
        for note in result.notes:
            click.echo(f"Note: {note}.")
        return
    if result.kind == "files":
        already = result.already_there or 0
        click.echo(
            f"Restored {_plural(result.files or 0, 'file')} ({human(result.bytes or 0)}), "
            f"{_plural(result.dirs or 0, 'folder')} and {_plural(result.symlinks or 0, 'link')} of snapshot "
            f"{sid[:12]} into {result.target}; every file's SHA-256 verified"
            + (_already_there(already) if already else ".")
        )
        if cleared := result.special_bits_cleared:
            which = "file or folder" if cleared == 1 else "files or folders"
            click.echo(
                f"The setuid or setgid bit of {cleared} {which} was not restored; "
                "add --special-bits to restore it."
            )
        return
    for f in result.restored:
        click.echo(f"Restored {f.path} ({human(f.size)}, SHA-256 {f.sha256[:16]}… verified)")
    click.echo(f"Snapshot {sid[:12]} restored.")


def verified(report: VerifyReport, read_data: bool, as_json: bool) -> int:
    """Show a repository's check; the exit code is 3 if anything is damaged."""
    if as_json:
        emit_json(
            {
                "ok": report.ok,
                "snapshots": report.snapshots,
                "packs": report.packs,
                "blobs_read": report.blobs,
                "problems": [
                    {
                        "object": p.subject,
                        "message": p.message,
                        "affected": [{"snapshot_id": sid, "path": path} for sid, path in p.affected],
                    }
                    for p in report.problems
                ],
            }
        )
    else:
        scope = "structure and data" if read_data else "structure"
        click.echo(
            f"Checked {scope}: {report.snapshots} snapshots, {report.packs} packs"
            + (f", {report.blobs} blobs, {human(report.bytes_read)} read" if read_data else "")
            + "."
        )
        for p in report.problems:
            click.echo(f"DAMAGED: {p.subject} {p.message}")
            for sid, path in p.affected:
                click.echo(f"    affects snapshot {sid[:12]}: {path}")
        if report.ok:
            click.echo("No problems found.")
    return 0 if report.ok else EXIT_DAMAGE


def index_rebuilt(result: IndexRebuilt) -> int:
    click.echo(f"Indexed {result.blobs} blobs in {result.packs} packs.")
    for name in result.unreadable:
        click.echo(f"DAMAGED: pack {name[:12]} has an unreadable header; its blobs are unindexed")
    return EXIT_DAMAGE if result.unreadable else 0


def repaired(result: Repaired, as_json: bool) -> None:
    """Show what a repair did (or, in a dry run, would do): each damaged pack, each snapshot that
    lost data and what became of it."""
    r = result.report
    if as_json:
        out = dataclasses.asdict(r)
        out["salvaged_blobs"] = r.salvaged_blobs
        out["damaged_packs"] = [p.name for p in r.damaged_packs]
        out["damaged_pack_details"] = [dataclasses.asdict(p) for p in r.damaged_packs]
        out["unreadable_snapshots"] = [{"snapshot_id": s, "reason": why} for s, why in r.unreadable_snapshots]
        out["set_aside"] = str(result.set_aside)
        emit_json(out)
        return
    would = "Would set" if r.dry_run else "Set"
    click.echo(f"Read {r.packs} packs ({human(r.bytes_read)}).")
    for p in r.damaged_packs:
        kept = "would be stored" if r.dry_run else "stored"
        click.echo(
            f"{would} aside damaged pack {p.name[:12]} ({p.reason}): {p.intact} intact blobs {kept} "
            f"again in new packs, {p.lost} lost."
        )
    for name in r.missing_packs:
        click.echo(f"Pack {name[:12]} is missing: the index {'would forget' if r.dry_run else 'forgets'} it.")
    for name in r.damaged_index_files:
        click.echo(
            f"Index file {name[:12]} is damaged: {'would be' if r.dry_run else 'was'} rebuilt from the packs."
        )
    if r.unindexed_packs:
        again = "would be indexed" if r.dry_run else "indexed"
        click.echo(f"{len(r.unindexed_packs)} sound pack(s) that no index named {again} again.")
    if r.indexed_blobs is not None:
        click.echo(f"Rebuilt the index: {r.indexed_blobs} blobs in {r.indexed_packs} packs.")
    for sid, why in r.unreadable_snapshots:
        click.echo(f"{would} aside snapshot {sid[:12]}, which cannot be read ({why}).")
    for s in r.snapshots:
        what = f"{s.kind} snapshot {s.snapshot_id[:12]} of {s.source} ({when(s.time)})"
        if s.kind == "files":
            click.echo(f"The {what} lost {len(s.lost)} file(s):")
            for path in s.lost[:20]:
                click.echo(f"    {path}")
            if len(s.lost) > 20:
                click.echo(f"    ... and {len(s.lost) - 20} more (`--json` lists them all)")
        elif s.lost_chunks is not None:
            click.echo(f"The {what} lost {s.lost_chunks} of the {s.chunks} chunks of {', '.join(s.lost)}.")
        else:
            click.echo(f"The {what} lost the list of the chunks of {', '.join(s.lost)}.")
        if s.kept_files is None:
            click.echo(f"    It cannot be restored: {would.lower()} aside, and listed as DAMAGED.")
        elif s.replaced_by is None:
            click.echo(
                f"    Would be replaced by a snapshot of its {s.kept_files} intact files, and set aside."
            )
        else:
            click.echo(
                f"    Replaced by snapshot {s.replaced_by[:12]}, which keeps its {s.kept_files} intact "
                "files; the old one is set aside."
            )
    if not r.changed:
        click.echo("No damage found; nothing to repair.")
    elif r.dry_run:
        click.echo("Nothing was changed (--dry-run). Run `capsule repair` to do it.")
    else:
        click.echo(
            f"What was set aside is kept in {result.set_aside}. Run `capsule backup --kind all` to store "
            "again what the shop still has, then `capsule verify --read-data`."
        )


def unlocked(result: Unlocked) -> None:
    for d in result.removed:
        click.echo(f"Removed {d}.")
    if not result.removed:
        click.echo("No stale locks.")
    for job in result.interrupted:
        again = "`capsule backup`" if job.startswith("backup") else "`capsule worker --until-idle`"
        click.echo(f"Marked {job} as interrupted: {again} finishes it, `capsule cancel` drops it.")


def job_cancelled(result: Cancelled, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(f"Cancelled {result.job_type} job {result.job_id} (it was {result.was}).")
    for job_id in result.released:
        click.echo(f"Backup job {job_id}, queued behind it, may start now.")


# ---- jobs and the event log ---------------------------------------------------------------

DETAIL_COLUMN = 88
"""Where `capsule jobs` starts its DETAIL column; a longer detail goes on below, whole words."""
DETAIL_WIDTH = 80


def _whole_words(text: str) -> list[str]:
    """`text` in lines of DETAIL_WIDTH, cut between words only (a path longer than a line stays whole)."""
    return textwrap.wrap(text, DETAIL_WIDTH, break_long_words=False, break_on_hyphens=False) or [""]


def job_list(result: JobList, as_json: bool) -> None:
    rows = result.rows
    if as_json:
        emit_json([job_doc(r) for r in rows])
        return
    if not rows:
        if result.status:
            click.echo(f"No {result.status} jobs; `capsule jobs` lists them all.")
        else:
            click.echo("No jobs yet. Run `capsule backup`.")
        return
    header = f"{'JOB':24}  {'TYPE':7}  {'STATUS':9}  {'STEP':8}  {'PROGRESS':>9}  "
    click.echo(header + f"{'REQUESTED':19}  DETAIL")
    for r in rows:
        done, total = r.get("progress_done"), r.get("progress_total")
        shown = f"{100 * done / total:.0f}%" if done is not None and total else "-"
        detail = r.get("error") or r.get("snapshot_id") or r.get("queued_behind") or ""
        if r.get("queued_behind") and r.get("status") == "queued":
            detail = f"waits for {r['queued_behind']}"
        if r.get("warnings"):
            detail = f"{r['warnings']} warning(s); {detail}"
        step = r.get("current_step") or "-"
        first, *more = textwrap.wrap(
            str(detail), DETAIL_WIDTH, break_long_words=False, break_on_hyphens=False
        ) or [""]
        click.echo(
            f"{r['job_id']:24}  {r['job_type']:7}  {r['status'] or '-':9}  {step:8}  "
            f"{shown:>9}  {when(r.get('requested_at')):19}  {first}".rstrip()
        )
        for line in more:
            click.echo(f"{'':{DETAIL_COLUMN}}{line}")
        items = str(r.get("warning_items") or "").splitlines()
        for item in items:
            click.echo(f"{'':26}! {item}")
        if items and (r.get("warnings") or 0) > len(items):
            click.echo(f"{'':26}! ... `capsule audit --job {r['job_id']}` lists more")


def _proof_doc(row: dict[str, Any] | None) -> dict[str, Any] | None:
    keep = ("snapshot_id", "taken_at", "job_id", "proven_at")
    return {k: row[k] for k in keep} if row else None


def status(result: Status, as_json: bool) -> None:
    if as_json:
        doc = result.as_dict()
        for key in ("active_jobs", "recent_failures"):
            doc[key] = [job_doc(r) for r in doc[key]]
        doc["last_snapshot"] = snapshot_row_doc(result.last_snapshot)
        doc["last_snapshots"] = {k: snapshot_row_doc(r) for k, r in result.last_snapshots.items()}
        warned = result.last_backup_warnings
        doc["last_backup_warnings"] = warnings_doc(warned["count"], warned["items"]) if warned else None
        doc["proven"] = {k: _proof_doc(r) for k, r in result.proven.items()}
        doc["last_drill"] = job_doc(result.last_drill) if result.last_drill else None
        emit_json(doc)
        return
    click.echo(f"Repository: {result.repository}")
    for fresh in result.freshness:
        click.echo(fresh.line())
    for problem in result.problems:
        if problem.reason in (
            "consent_needed",
            "upload_behind",
        ):  # the others are the freshness lines and failures below
            click.echo(problem.line)
    for kind, last in result.last_snapshots.items():
        if last:
            click.echo(
                f"Last {kind} snapshot: {str(last['snapshot_id'])[:12]} at {when(last.get('time'))}"
                + (f", {human(last['bytes'])}" if last.get("bytes") else "")
            )
        else:
            click.echo(f"Last {kind} snapshot: none yet; run `capsule backup --kind {kind}`")
    warned = result.last_backup_warnings
    if warned:
        click.echo(f"Warnings of that backup: {warned['count']}")
        for item in warned["items"]:
            click.echo(f"  ! {item}")
    click.echo(f"Active jobs: {len(result.active_jobs)}")
    for r in result.active_jobs:
        click.echo(f"  {r['job_id']} {r['job_type']} {r['status']} {r.get('current_step') or ''}")
    for r in result.recent_failures:
        click.echo(f"Failed: {r['job_id']} {r['job_type']}: {r.get('error')}")
    click.echo(f"Event log: {result.event_log_position} events")
    _proven(result)
    _space(result)
    _offsite(result)


def _offsite(result: Status) -> None:
    """Where the copies away from this machine are, and when each last held everything."""
    if not result.offsite:
        click.echo(
            "Off-site copies: none: the backups are only on this machine, and a fire or a dead disk takes "
            "them with the shop's data. Add one: `capsule destinations add folder NAME PATH` (a NAS share "
            "or a USB disk) or `capsule destinations add gdrive NAME --client-secrets FILE` "
            "(guide section 20)."
        )
        return
    for copy in result.offsite:
        if not copy.enabled:
            state = "disabled: nothing is copied there (`capsule destinations enable " + copy.name + "`)"
        elif copy.last_whole_copy_at is None:
            state = "has never held everything yet (`capsule sync " + copy.name + "`)"
        else:
            state = f"last held everything {when(copy.last_whole_copy_at)}"
        click.echo(f"Off-site copy {copy.name} ({copy.kind} {copy.location}): {state}")


def _space(result: Status) -> None:
    """The repository's size, what the last prune's plan found unused, and the last prune."""
    space = result.space
    if space is None:
        return
    size = human(space.stored_bytes) if space.stored_bytes is not None else "unknown (cannot be read)"
    if space.unused_left is not None:
        unused = f"about {human(space.unused_left)} unused after the last prune"
    elif space.unused_bytes is not None:
        unused = f"{human(space.unused_bytes)} unused when a prune last planned, {when(space.measured_at)}"
    else:
        unused = "unused space not measured yet; `capsule prune --dry-run` measures it"
    click.echo(f"Repository size: {size}; {unused}")
    if space.last_job_id is None:
        click.echo("Last prune: never")
    else:
        freed = human(space.last_freed or 0)
        click.echo(f"Last prune: {when(space.last_finished_at)}, gave back {freed} (job {space.last_job_id})")


def _proven(result: Status) -> None:
    """The newest snapshot of each kind a restore drill proved restorable, and the last drill."""
    for kind, proof in result.proven.items():
        if proof:
            click.echo(
                f"{kind}: snapshot {str(proof['snapshot_id'])[:12]} proven restorable "
                f"{when(proof['proven_at'])} (drill {proof['job_id']})"
            )
        else:
            click.echo(f"{kind}: no snapshot proven restorable yet; run `capsule drill`")
    drill = result.last_drill
    if drill:
        ended = f" {when(drill['finished_at'])}" if drill.get("finished_at") else ""
        failed = f": {drill['error']}" if drill.get("error") else ""
        click.echo(f"Last drill: {drill['job_id']} {drill['status']}{ended}{failed}")


def drilled(result: Drilled, as_json: bool) -> int:
    """What a drill proved; the exit code is 3 when rows of the database break a foreign key."""
    warned = result.foreign_key_check != "ok"
    if as_json:
        emit_json(result.as_dict())
        return EXIT_CODES.warnings if warned else EXIT_CODES.ok
    database, files = result.taken_at.get("database"), result.taken_at.get("files")
    click.echo(f"Drill {result.job_id}: the newest snapshots restore.")
    click.echo(
        f"  database: snapshot {result.database_snapshot_id[:12]} of {when(database)} restored and checked; "
        f"integrity_check {result.integrity_check}, foreign_key_check {result.foreign_key_check}"
    )
    click.echo(
        f"  images: snapshot {result.files_snapshot_id[:12]} of {when(files)}: {result.images_checked} of "
        f"{result.images_total} images restored, each as its snapshot describes it"
    )
    click.echo(
        f"Restored {human(result.bytes)} in {result.seconds:.1f} s into a scratch folder, now deleted."
    )
    if warned:
        click.echo(
            "Rows that break a foreign key (in the live database too; a backup keeps them as they are):",
            err=True,
        )
        for row in result.foreign_key_rows:
            click.echo(f"  {row}", err=True)
    return EXIT_CODES.warnings if warned else EXIT_CODES.ok


def status_check(result: Status, as_json: bool) -> int:
    """`status --check`: one line per problem and exit 5, or `ok` and exit 0 (for a monitoring system)."""
    problems = result.as_dict()["problems"]
    if as_json:
        emit_json({"ok": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            click.echo(problem["line"])
    else:
        click.echo("ok")
    return EXIT_CODES.attention if problems else EXIT_CODES.ok


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


def audit_trail(result: AuditTrail, as_json: bool) -> None:
    rows = result.events
    if as_json:
        emit_json(
            [
                {
                    "position": e.position,
                    "recorded_at": e.recorded_at,
                    "actor": e.metadata.actor,
                    "stream_id": e.stream_id,
                    "version": e.version,
                    "type": e.type,
                    "data": e.data,
                }
                for e in rows
            ]
        )
        return
    if not rows:
        click.echo("No events match.")
        return
    for e in rows:
        click.echo(
            f"{when(e.recorded_at)}  {e.metadata.actor:32}  {e.stream_id:32}  {e.type:18}  {_summary(e.data)}"
        )


def log_verified(report: ChainReport, as_json: bool) -> None:
    if as_json:
        emit_json(dataclasses.asdict(report))
        return
    click.echo(f"Checked {report.events} events: each matches its seal and follows the one before it.")
    since = f"The log is chained since {when(report.chained_at)}"
    if report.chained_after:
        since += f"; the events up to position {report.chained_after} were written before and sealed then"
    click.echo(since + ".")
    if report.events:
        click.echo(f"Head: position {report.head_position}, chain {report.head}")
        click.echo(
            "Keep the head elsewhere: checked against it later, it shows whether events were removed "
            "from the end or the log was rewritten by someone holding its key."
        )


def replayed(report: ReplayReport) -> None:
    click.echo(f"Replayed {report.events} events in {report.seconds:.2f} s.")


def _count(snapshots: int) -> str:
    return f"{snapshots} snapshot" + ("" if snapshots == 1 else "s")


def log_repaired(report: LogRepair) -> None:
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


def worker_started(worker_id: str) -> None:
    click.echo(f"Worker {worker_id} running; Ctrl-C stops it.", err=True)


def _already_there(count: int) -> str:
    if count == 1:
        return "; 1 was already there and left as it was."
    return f"; {count} were already there and left as they were."


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def worker_done(done: WorkDone) -> None:
    """What the worker finished (a failed job is the job's failure, not the worker's: exit 0)."""
    if not (done.jobs_completed or done.jobs_failed or done.steps_completed or done.steps_failed):
        click.echo(f"Worker {done.worker_id} stopped; it found nothing to do.")
        return
    click.echo(
        f"Worker {done.worker_id} stopped: {_plural(done.jobs_completed, 'job')} completed, "
        f"{done.jobs_failed} failed; {_plural(done.steps_completed, 'step')} done, "
        f"{_plural(done.steps_failed, 'failed attempt')}."
        + (" `capsule jobs --status failed` says why." if done.jobs_failed else "")
    )


def worker_interrupted(result: WorkInterrupted) -> None:
    if not result.paused:
        click.echo(f"capsule: interrupted ({result.signal}); the worker was running no step", err=True)
        return
    jobs = ", ".join(result.paused)
    click.echo(
        f"capsule: interrupted ({result.signal}); {jobs} paused and locks released: the next "
        "`capsule worker` or `capsule backup` goes on with it",
        err=True,
    )


def sample_shop(shop: SampleShop) -> None:
    click.echo(_sample_database(shop.database))
    click.echo(_sample_images(shop.images))


def _sample_database(part: SamplePart) -> str:
    if not part.made:
        return f"Left {part.path} as it was: something is there already."
    return f"Made a sample database of {human(part.bytes)} at {part.path}."


def _sample_images(part: SamplePart) -> str:
    if not part.made:
        return f"Left {part.path} as it was: it holds files already."
    return f"Made {part.files} sample product images ({human(part.bytes)}) in {part.path}."
