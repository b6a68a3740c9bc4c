"""What a backup of either kind asks of the repository besides storing: its parent snapshot, a
snapshot its job already committed, the packs the index names that are gone, and the full backup's
check that a blob's pack is really there.

The database's backup and the images' share these; neither loads the other's engine for them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from capsule.adapters.logs import get_logger
from capsule.adapters.repository.repo import Repository
from capsule.domain.manifest import Manifest

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str
    manifest: Manifest


def latest_snapshot(repo: Repository, kind: str, source: str | None = None) -> tuple[str, Manifest] | None:
    """The newest readable snapshot of `kind` (of `source` on this machine, if given): the parent.

    A snapshot that cannot be read is skipped; one of the same path on another machine is another
    source, whose files' sizes, times and inodes say nothing about this machine's.
    """
    host = socket.gethostname()

    def of_source(m: Manifest) -> bool:
        identity = m.source_identity()
        return source is None or (identity.path == source and identity.host == host)

    found = [(m.time, sid, m) for sid, m in repo.snapshots() if m.kind == kind and of_source(m)]
    if not found:
        return None
    _, sid, m = max(found, key=lambda t: (t[0], t[1]))
    return sid, m


def missing_packs_warning(repo: Repository) -> str | None:
    """One sentence, logged, when packs the loaded index names were missing from the repository's
    listing; None when every one is there.

    Their blobs count as not stored (`Index.contains`): the backup stores again what it needs of
    them, so its snapshot restores. Older snapshots may still need them, which `verify` reports.
    """
    missing = repo.index.gone_packs
    if not missing:
        return None
    text = (
        f"{missing} pack(s) named by the index are missing from the repository; this backup stores "
        "again whatever it needs of their blobs: run `capsule verify` to see which older snapshots "
        "they hurt"
    )
    log.warning(text, packs=missing)
    return text


def full_check(repo: Repository) -> Callable[[bytes], bool]:
    """A full backup reuses a blob only if its pack is really there, and stores it again if not."""
    packs: dict[str, bool] = {}

    def has_blob(blob_id: bytes) -> bool:
        if repo.pending_blob(blob_id):
            return True
        loc = repo.index.lookup(blob_id)
        if loc is None:
            return False
        if loc.pack_id not in packs:
            packs[loc.pack_id] = repo.backend.exists("data", loc.pack_id)
        return packs[loc.pack_id]

    return has_blob


def find_committed(repo: Repository, job_id: str, kind: str) -> BackupResult | None:
    """The snapshot of `kind` that job `job_id` already wrote, if its process died before saying so."""
    for sid, manifest in repo.snapshots():
        if manifest.job_id == job_id and manifest.kind == kind:
            return BackupResult(sid, manifest)
    return None
