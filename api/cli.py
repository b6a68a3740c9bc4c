"""The `capsule` command line.

Exit codes: 0 success; 1 the command failed (the message says why and what to do); 2 wrong usage;
3 damage found (verify, or a restore that failed its checks); 4 the repository is locked by another
live process, or the database is held by another job; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import structlog
from pydantic import ValidationError

from api.filters import filter_options, snapshot_filter
from api.logging import configure
from domain.errors import CapsuleError
from orchestrator import services
from orchestrator.private import keep_private
from orchestrator.settings import Settings

log = structlog.get_logger("capsule")

EXIT_DAMAGE = 3


class Context:
    def __init__(self) -> None:
        self.settings = Settings()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal; nothing otherwise (logs and --json stay clean)."""
    if not enabled or not sys.stderr.isatty():
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


def run(fn: Callable[[], int | None]) -> None:
    """Run a command; turn our errors into one sentence and an exit code, never a traceback."""
    try:
        code = fn()
    except CapsuleError as e:
        click.echo(f"capsule: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        click.echo("capsule: interrupted; nothing half-written was kept", err=True)
        sys.exit(130)
    sys.exit(code or 0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Capsule: backups of a point-of-sale server's database, verified before every restore.

    Paths come from CAPSULE_DATABASE, CAPSULE_REPOSITORY, CAPSULE_HOME and CAPSULE_KEY_FILE (or
    capsule.toml). Exit codes: 0 ok, 1 failed, 2 usage, 3 damage found, 4 locked, 130 interrupted.
    """
    try:
        obj = Context()
    except ValidationError as e:
        first = e.errors()[0]
        name = "CAPSULE_" + "_".join(str(p) for p in first["loc"]).upper()
        click.echo(f"capsule: the setting {name} is invalid ({first['msg']}); fix it and retry", err=True)
        sys.exit(2)
    configure(log_level or obj.settings.log_level, obj.settings.log_format)
    keep_private(obj.settings.home)
    ctx.obj = obj


pass_ctx = click.make_pass_decorator(Context)


def _read_passphrase(path: Path | None) -> str | None:
    if path is None:
        return None
    text = path.read_text().strip()
    if not text:
        raise CapsuleError(f"the passphrase file {path} is empty")
    return text


@cli.command()
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also let this passphrase open the repository (for recovery without the key file).",
)
@click.option(
    "--exist-ok",
    is_flag=True,
    help="Succeed without change if the repository exists and the key file opens it.",
)
@pass_ctx
def init(obj: Context, passphrase_file: Path | None, exist_ok: bool) -> None:
    """Create the repository and its key file."""

    def go() -> None:
        if exist_ok and services.repository_exists(obj.settings):
            services.open_repository(obj.settings)
            click.echo(f"The repository at {obj.settings.repository} exists and its key opens it.")
            return
        services.init_repository(obj.settings, _read_passphrase(passphrase_file))
        key = obj.settings.resolved_key_file
        click.echo(f"Created a repository at {obj.settings.repository}.")
        click.echo(
            f"Its key file is {key}. Keep a copy of it somewhere safe, away from this machine: "
            "without it (or the passphrase, if you set one) the backups cannot be read by anyone."
        )

    run(go)


def _backup_source(settings: Settings, kind: str) -> str:
    from domain.backup_job import all_source  # noqa: PLC0415

    database, uploads = str(settings.database.resolve()), str(settings.uploads.resolve())
    return {"database": database, "files": uploads}.get(kind) or all_source(database, uploads)


@cli.command()
@click.option(
    "--kind",
    type=click.Choice(["database", "files", "all"]),
    default="database",
    show_default=True,
    help="The database (CAPSULE_DATABASE), the product images (CAPSULE_UPLOADS), or both.",
)
@click.option("--full", is_flag=True, help="Re-read everything; reuse no blob whose pack is gone.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_ctx
def backup(obj: Context, kind: str, full: bool, as_json: bool) -> None:
    """Back up the database, the product images, or both into the repository."""

    def go() -> None:
        from domain.backup_job import committed_snapshot_ids  # noqa: PLC0415
        from orchestrator.jobrunner import run_job  # noqa: PLC0415 - the job runner loads slowly
        from orchestrator.runtime import person  # noqa: PLC0415

        settings = obj.settings
        if settings.nice:
            os.nice(settings.nice)  # the shop's own programs keep the CPU they need
        source = _backup_source(settings, kind)
        with progress_bar("Backing up", not as_json) as progress:
            loaded = run_job(
                settings,
                "backup",
                lambda rt: rt.request_backup(source=source, kind=kind, full=full, actor=person()),
                progress=progress,
            )
        job_id = loaded.state.job_id
        repo = services.open_repository(settings)
        results = []
        for committed in committed_snapshot_ids(loaded.state):  # type: ignore[arg-type]
            sid, m = services.resolve_snapshot(repo, committed)
            out = {"snapshot_id": sid, "job_id": job_id, **json.loads(m.model_dump_json())}
            out.pop("entries", None)
            out.pop("tree", None)
            results.append(out)
            if not as_json:
                _print_snapshot(sid, m, job_id)
        if as_json:
            click.echo(
                json.dumps(results[0] if len(results) == 1 else {"job_id": job_id, "snapshots": results})
            )

    run(go)


def _print_snapshot(sid: str, m: Any, job_id: str) -> None:
    t = m.totals
    reused = ""
    if m.kind == "files":
        reused = f"{t.files} files, {t.read_files or 0} of them read (the others had not changed); "
    click.echo(
        f"Snapshot {sid[:12]} of {m.source}: {_human(t.bytes)} in {t.duration_seconds:.1f} s; {reused}"
        f"{t.new_blobs} new of {t.blobs} chunks, repository grew by {_human(t.stored_bytes)} (job {job_id})."
    )
    if t.warnings:
        what = "item(s) not backed up as they are" if m.kind == "files" else "warning(s)"
        click.echo(f"{t.warnings} {what}:", err=True)
        for line in m.warnings[:20]:
            click.echo(f"  {line}", err=True)
        if t.warnings > 20:
            click.echo(f"  ... and {t.warnings - 20} more; the backup's log names every one", err=True)


@cli.command()
@filter_options
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def snapshots(
    obj: Context, hosts: tuple[str, ...], paths: tuple[str, ...], tags: tuple[str, ...], as_json: bool
) -> None:
    """List the snapshots, oldest first; those that cannot be read are listed as damaged."""

    def go() -> None:
        listing = services.list_snapshots(obj.settings, snapshot_filter(hosts, paths, tags))
        if as_json:
            rows = []
            for sid, m in listing.snapshots:
                row = json.loads(m.model_dump_json(exclude={"entries", "tree"}))
                row["id"] = sid
                row["identity"] = m.source_identity().model_dump(mode="json")
                if m.kind == "database":
                    row["files"] = [e.path for e in m.entries]
                rows.append(row)
            rows += [{"id": d.name, "damaged": d.reason} for d in listing.damaged]
            click.echo(json.dumps(rows))
            return
        if not listing.snapshots and not listing.damaged:
            click.echo(
                "No snapshots yet. Run `capsule backup`."
                if not paths + hosts + tags
                else "No snapshot matches."
            )
            return
        click.echo(f"{'ID':12}  {'TIME (UTC)':19}  {'KIND':9}  {'SIZE':>10}  {'ADDED':>10}  SOURCE")
        here = services.configured_sources(obj.settings)["database"].host
        for sid, m in listing.snapshots:
            identity = m.source_identity()
            source = identity.path if identity.host == here else identity.describe()
            click.echo(
                f"{sid[:12]}  {m.time.strftime('%Y-%m-%d %H:%M:%S')}  "
                f"{m.kind + ('*' if m.full else ''):9}  {_human(m.totals.bytes):>10}  "
                f"{_human(m.totals.stored_bytes):>10}  {source}"
            )
        for d in listing.damaged:
            click.echo(f"{d.name[:12]}  DAMAGED: {d.reason}; `capsule verify` checks the repository")

    run(go)


@cli.command()
@click.argument("snapshot")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace files that already exist under --to.")
@click.option(
    "--check",
    "check_database",
    is_flag=True,
    help="Also run SQLite's quick_check on the restored database (--in-place always does).",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Restore into the live database (CAPSULE_DATABASE) after saving it aside.",
)
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="PATTERN",
    help="Files snapshots: restore only paths matching this glob (repeatable), e.g. 'shoes/*.jpg'.",
)
@click.option(
    "--from-other-source",
    is_flag=True,
    help="Allow a snapshot of another database (another machine or path) to replace the live one; "
    "`latest-*` then picks among every source.",
)
@click.option(
    "--special-bits",
    is_flag=True,
    help="Give files and folders back their setuid and setgid bits (without it they are cleared).",
)
@filter_options
@pass_ctx
def restore(  # noqa: PLR0917 (click passes options by position)
    obj: Context,
    snapshot: str,
    to: Path | None,
    force: bool,
    check_database: bool,
    in_place: bool,
    include: tuple[str, ...],
    from_other_source: bool,
    hosts: tuple[str, ...],
    paths: tuple[str, ...],
    tags: tuple[str, ...],
    special_bits: bool,
) -> None:
    """Restore SNAPSHOT: `latest-database` (the newest snapshot of CAPSULE_DATABASE on this
    machine), `latest-files` (of CAPSULE_UPLOADS, the images), `latest` (the newest of either), an
    id or a unique id prefix. --host, --path and --tag choose among the snapshots `latest-*` picks
    from (`capsule snapshots` takes them too)."""

    def go() -> None:
        if in_place == (to is not None):
            raise click.UsageError("give exactly one of --to DIR or --in-place")
        from domain.restore_job import IN_PLACE  # noqa: PLC0415 - the job runner loads slowly
        from orchestrator.jobrunner import run_job  # noqa: PLC0415
        from orchestrator.runtime import person  # noqa: PLC0415

        settings = obj.settings
        # The job records the snapshot itself: `latest` must not change between its attempts.
        sid, manifest = services.resolve_snapshot(
            services.open_repository(settings),
            snapshot,
            sources=None if from_other_source else services.configured_sources(settings),
            only=snapshot_filter(hosts, paths, tags),
        )
        if include and manifest.kind != "files":
            raise click.UsageError(f"snapshot {sid[:12]} holds a database; --include picks files of images")
        target = IN_PLACE if in_place else str(Path(str(to)).resolve())
        with progress_bar("Restoring", True) as progress:
            loaded = run_job(
                settings,
                "restore",
                lambda rt: rt.request_restore(
                    snapshot_id=sid,
                    target=target,
                    force=force,
                    check=check_database,
                    include=include,
                    from_other_source=from_other_source,
                    special_bits=special_bits,
                    actor=person(),
                ),
                progress=progress,
            )
        result: Any = loaded.state.result or {}  # type: ignore[attr-defined]
        if in_place:
            click.echo(f"Restored snapshot {sid[:12]} into {result.get('database')}.")
            click.echo(f"The database as it was before is saved at {result.get('safety_copy')}.")
            for note in result.get("notes") or []:
                click.echo(f"Note: {note}.")
            return
        if result.get("kind") == "files":
            already = result.get("already_there") or 0
            click.echo(
                f"Restored {result.get('files')} files ({_human(result.get('bytes') or 0)}), "
                f"{result.get('dirs')} folders and {result.get('symlinks')} links of snapshot {sid[:12]} "
                f"into {result.get('target')}; every file's SHA-256 verified"
                + (f"; {already} were already there and left as they were." if already else ".")
            )
            if cleared := result.get("special_bits_cleared"):
                click.echo(
                    f"The setuid or setgid bit of {cleared} files or folders was not restored; "
                    "add --special-bits to restore it."
                )
            return
        for f in result.get("restored", []):
            click.echo(f"Restored {f['path']} ({_human(f['size'])}, SHA-256 {f['sha256'][:16]}… verified)")
        click.echo(f"Snapshot {sid[:12]} restored.")

    run(go)


@cli.command()
@click.argument("snapshot")
@click.argument("path")
@pass_ctx
def cat(obj: Context, snapshot: str, path: str) -> None:
    """Write one file of SNAPSHOT to stdout, e.g. `capsule cat latest-files shoes/red.jpg > red.jpg`."""

    def go() -> None:
        from adapters.files_restore import cat_file  # noqa: PLC0415

        repo = services.open_repository(obj.settings)
        _, manifest = services.resolve_snapshot(
            repo, snapshot, sources=services.configured_sources(obj.settings)
        )
        out = sys.stdout.buffer
        if out.isatty():
            raise CapsuleError("stdout is a terminal; send it to a file: capsule cat SNAPSHOT PATH > FILE")
        cat_file(repo, manifest, path, out)

    run(go)


@cli.command()
@click.option(
    "--read-data",
    is_flag=True,
    help="Also decrypt and check every blob of every pack, and every image against its SHA-256.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def verify(obj: Context, read_data: bool, as_json: bool) -> None:
    """Check the repository and every snapshot as a restore would; exit 3 if anything is damaged,
    missing or would be refused."""

    def go() -> int:
        with progress_bar("Reading packs", read_data and not as_json) as progress:
            report = services.verify_repository(obj.settings, read_data=read_data, progress=progress)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "ok": report.ok,
                        "snapshots": report.snapshots,
                        "packs": report.packs,
                        "blobs_read": report.blobs,
                        "problems": [p.as_dict() for p in report.problems],
                    }
                )
            )
        else:
            scope = "structure and data" if read_data else "structure"
            click.echo(
                f"Checked {scope}: {report.snapshots} snapshots, {report.packs} packs"
                + (f", {report.blobs} blobs, {_human(report.bytes_read)} read" if read_data else "")
                + "."
            )
            for p in report.problems:
                click.echo(f"DAMAGED: {p.subject} {p.message}")
                for sid, path in p.affected:
                    click.echo(f"    affects snapshot {sid[:12]}: {path}")
            if report.ok:
                click.echo("No problems found.")
        return 0 if report.ok else EXIT_DAMAGE

    run(go)


@cli.command("rebuild-index")
@pass_ctx
def rebuild_index_cmd(obj: Context) -> None:
    """Rebuild the index files from the packs (takes an exclusive lock)."""

    def go() -> int:
        packs, blobs, unreadable = services.rebuild_repository_index(obj.settings)
        click.echo(f"Indexed {blobs} blobs in {packs} packs.")
        for name in unreadable:
            click.echo(f"DAMAGED: pack {name[:12]} has an unreadable header; its blobs are unindexed")
        return EXIT_DAMAGE if unreadable else 0

    run(go)


@cli.command()
@click.option("--all", "remove_all", is_flag=True, help="Remove live locks too (a host is gone).")
@pass_ctx
def unlock(obj: Context, remove_all: bool) -> None:
    """Remove stale locks left by processes that died."""

    def go() -> None:
        removed = services.unlock(obj.settings, remove_all)
        for d in removed:
            click.echo(f"Removed {d}.")
        if not removed:
            click.echo("No stale locks.")

    run(go)


def main() -> None:
    from api import cli_jobs  # noqa: F401, PLC0415 - registers the job commands; it imports this module
    from api.cli_demo import demo  # noqa: PLC0415 - it imports this module

    cli.add_command(demo)
    cli(prog_name="capsule")
