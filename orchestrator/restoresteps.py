"""The steps of a restore: into a folder (`restore`), or into the live database (`stage`, `apply`).

Each step is safe to run again after its process died at any instant:
- `restore` recognises a file it already put in place;
- `stage` and `apply` keep their staged copy and the safety copy under names made from the job
  id, so a second attempt reuses them (`restore_apply` says when a second attempt saves the live
  database again).

A backup's process never loads this module, nor the restore's engine with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

from capsule.adapters.filedigest import sha256_file
from capsule.adapters.repository.entry_rules import check_database_snapshot
from capsule.adapters.repository.lock import locked
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import (
    fetch_whole_packs,
    file_matches,
    restore_snapshot,
    safe_target,
    write_entry,
)
from capsule.adapters.sqlite.snapshot import check_database, copy_into_live
from capsule.adapters.sqlite.sourcelock import source_lock
from capsule.domain.manifest import Manifest
from capsule.domain.restore_job import APPLY, RESTORE, STAGE
from capsule.orchestrator import faults
from capsule.orchestrator.safety import name_pending, prune, safety_path, save_pending
from capsule.orchestrator.steps import (
    StepContext,
    StepFunction,
    StepRefused,
    halfway,
    remove_restore_leftovers,
    staged_path,
)
from capsule.orchestrator.usecases.restore import check_in_place_source
from capsule.orchestrator.usecases.snapshots import resolve_snapshot
from capsule.orchestrator.usecases.source import open_source

log = structlog.get_logger(__name__)


# ---- restore into a folder ----------------------------------------------------------------


def restore_to_folder(ctx: StepContext) -> dict[str, Any]:
    settings = ctx.settings
    to = Path(ctx.request["target"])
    repo = open_source(settings, ctx.request.get("source"))
    with locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True):
        sid, manifest = resolve_snapshot(repo, ctx.request["snapshot_id"])
        force = bool(ctx.request.get("force"))
        include = list(ctx.request.get("include") or [])
        special_bits = bool(ctx.request.get("special_bits"))
        if manifest.kind == "files":
            return _restore_files(
                ctx, repo, sid, manifest, to, include=include, force=force, special_bits=special_bits
            )
        if include:
            raise StepRefused(
                f"snapshot {sid[:12]} holds a database: --include picks files of a files snapshot"
            )
        found, digests = _found_before(repo, to, manifest.entries) if ctx.attempt > 1 else ([], [])
        if found and not force and all(f is True for f in found):
            # An earlier attempt put every file in place and died before saying so.
            return {
                "snapshot_id": sid,
                "files": len(manifest.entries),
                "bytes": sum(e.size for e in manifest.entries),
                "restored": [
                    {"path": str(safe_target(to, e.path)), "size": e.size, "sha256": d}
                    for e, d in zip(manifest.entries, digests, strict=True)
                ],
            }
        if ctx.attempt > 1:
            for entry in manifest.entries:
                target = safe_target(to, entry.path)
                remove_restore_leftovers(target.parent, target.name)
        restored = restore_snapshot(
            repo,
            manifest,
            to,
            # After a crash, a file equal to the snapshot is this job's own: replacing it is safe.
            force=force or (bool(found) and all(f is not False for f in found)),
            progress=halfway(ctx, "restore"),
            check_database=bool(ctx.request.get("check")),
            workers=settings.workers,
            special_bits=special_bits,
        )
    faults.point("restore:written")
    return {
        "snapshot_id": sid,
        "files": len(restored),
        "bytes": sum(r.size for r in restored),
        "restored": [{"path": str(r.path), "size": r.size, "sha256": r.sha256} for r in restored],
    }


def _restore_files(
    ctx: StepContext,
    repo: Repository,
    sid: str,
    manifest: Manifest,
    to: Path,
    *,
    include: list[str],
    force: bool,
    special_bits: bool,
) -> dict[str, Any]:
    # Loaded by a files restore alone: the other jobs' processes (a backup, a prune) never need it.
    from capsule.adapters.files.restore import remove_partial_writes, restore_files  # noqa: PLC0415

    if ctx.attempt > 1:
        # Files an earlier attempt put in place are found equal to the snapshot and left alone.
        remove_partial_writes(to)
    else:
        remove_partial_writes(to, owner="gone")
    done = restore_files(
        repo,
        manifest,
        to,
        include=include,
        force=force,
        special_bits=special_bits,
        progress=halfway(ctx, "restore"),
        workers=ctx.settings.workers,
    )
    faults.point("restore:written")
    return {
        "snapshot_id": sid,
        "kind": "files",
        "target": str(to),
        "files": done.files,
        "dirs": done.dirs,
        "symlinks": done.symlinks,
        "bytes": done.bytes,
        "already_there": done.already_there,
        "special_bits_cleared": done.special_bits_cleared,
    }


def _found_before(
    repo: Repository, to: Path, entries: list[Any]
) -> tuple[list[bool | None], list[str | None]]:
    """For each entry: None if nothing is at its place, True if the snapshot's file is, False if
    another file is (which only --force may replace); and the SHA-256 of each file found to be the
    snapshot's. Each file is read at most once."""
    found: list[bool | None] = []
    digests: list[str | None] = []
    for entry in entries:
        target = safe_target(to, entry.path)
        digest = None
        if not target.exists():
            found.append(None)
        elif not target.is_file():
            found.append(False)
        else:
            repo.ensure_index()  # a database entry without a SHA-256 is held to its chunk ids
            digest = file_matches(repo, entry, target)
            found.append(digest is not None)
        digests.append(digest)
    return found, digests


# ---- restore into the live database --------------------------------------------------------


def restore_stage(ctx: StepContext) -> dict[str, Any]:
    """Refuse a snapshot of another source unless the request allows it; then verify the snapshot
    into staging: every blob, the file's SHA-256 and SQLite's check."""
    settings = ctx.settings
    repo = open_source(settings, ctx.request.get("source"))
    holder = f"restore job {ctx.job_id}"
    with (
        source_lock(settings.home, settings.database, holder, settings.lock_wait_seconds),
        locked(repo.backend, "restore", timeout=settings.lock_wait_seconds, reading=True),
    ):
        sid, manifest = resolve_snapshot(repo, ctx.request["snapshot_id"])
        if manifest.kind != "database":
            raise StepRefused(f"snapshot {sid[:12]} holds files, not a database")
        check_database_snapshot(manifest)
        notes = check_in_place_source(
            settings, sid, manifest, from_other_source=bool(ctx.request.get("from_other_source"))
        )
        staged = staged_path(settings, ctx.job_id)
        entry = manifest.entries[0]
        repo.ensure_index()
        digest = file_matches(repo, entry, staged) if staged.is_file() else None
        if digest is None:
            remove_restore_leftovers(staged.parent, staged.name)
            # Capsule's own copy until it is applied: private, whatever the snapshot's mode.
            with fetch_whole_packs(repo, [entry], staged.parent):
                tmp = write_entry(repo, entry, staged, halfway(ctx, "stage"), check_database=True, mode=0o600)
            os.replace(tmp.path, staged)
            digest = tmp.sha256
    faults.point("stage:staged")
    # The staged copy's own SHA-256: what the apply step holds it to (the entry may have none).
    return {"snapshot_id": sid, "staged": str(staged), "sha256": digest, "notes": notes}


def restore_apply(ctx: StepContext) -> dict[str, Any]:
    """Save the live database aside, then copy the staged database into it through SQLite's
    backup API.

    One safety copy per job (capsule.orchestrator.safety), saved right before the live database is
    replaced, so that no sale made while the restore was staged is lost. It is written under a
    pending name and named just before the first byte is copied into the live database:
    - an attempt that died before that leaves only the pending copy, and the live database
      untouched: the next attempt saves it again, with the sales made meanwhile;
    - an attempt that died after it may have left the live database part or wholly restored: the
      next attempt keeps the named copy as it is and never saves the live database over it.
    Once the live database holds the snapshot, only the newest CAPSULE_SAFETY_COPIES copies are
    kept, this job's among them.
    """
    settings = ctx.settings
    staged = Path(ctx.results["stage"]["staged"])
    if not staged.is_file() or sha256_file(staged) != ctx.results["stage"]["sha256"]:
        raise StepRefused(f"the staged copy {staged} is missing or changed; request the restore again")
    problems = check_database(staged)
    if problems:
        raise StepRefused(f"the staged copy fails SQLite's check: {problems[0]}")
    safety = safety_path(settings, ctx.job_id)
    holder = f"restore job {ctx.job_id}"
    with source_lock(settings.home, settings.database, holder, settings.lock_wait_seconds):
        named = safety.exists()
        if named:
            log.info("keeping the safety copy saved before an earlier attempt began", safety_copy=str(safety))
        else:
            save_pending(settings.database, safety)
        faults.point("apply:checked")
        if not named:
            name_pending(safety)
        copy_into_live(staged, settings.database)
        faults.point("apply:copied")
        prune(settings, ctx.job_id)
    # The staged copy stays until the job is over: an attempt that dies here can apply it again.
    stage = ctx.results["stage"]
    return {
        "snapshot_id": stage["snapshot_id"],
        "database": str(settings.database),
        "safety_copy": str(safety),
        "files": 1,
        "bytes": staged.stat().st_size,
        "notes": list(stage.get("notes") or []),
    }


RESTORE_STEPS: dict[tuple[str, str], StepFunction] = {
    ("restore", RESTORE): restore_to_folder,
    ("restore", STAGE): restore_stage,
    ("restore", APPLY): restore_apply,
}
