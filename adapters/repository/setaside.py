"""The snapshots a repair set aside, as `capsule snapshots` lists them.

Apart from the repair itself (`repair.py`), so that listing them loads no more than reading a
manifest needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zstandard

from capsule.adapters.errors import IntegrityError
from capsule.adapters.repository.backends.storage import Kind
from capsule.adapters.repository.repo import Repository
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import Manifest

SET_ASIDE: Kind = "damaged"
"""Where repair moves damaged packs and the snapshots it replaces or cannot keep."""
SET_ASIDE_MANIFEST_LIMIT = 1024 * 1024
"""Files set aside that are larger than this are packs, not manifests: not read when listing."""


@dataclass(frozen=True)
class SetAside:
    """A snapshot a repair set aside because it cannot be restored."""

    name: str
    manifest: Manifest


def set_aside_snapshots(repo: Repository) -> list[SetAside]:
    """The snapshots a repair set aside that still authenticate (the database snapshots it could not
    keep, and the files snapshots it replaced); packs and damaged manifests are skipped."""
    found = []
    for name in sorted(repo.backend.list(SET_ASIDE)):
        if repo.backend.size(SET_ASIDE, name) > SET_ASIDE_MANIFEST_LIMIT:
            continue
        stored = repo.backend.read(SET_ASIDE, name)
        if hashlib.sha256(stored).hexdigest() != name:
            continue
        try:
            manifest = _open_manifest(repo, stored, name)
        except (CapsuleError, ValueError, zstandard.ZstdError):
            continue  # a pack, or a manifest that was damaged
        found.append(SetAside(name, manifest))
    return found


def _open_manifest(repo: Repository, stored: bytes, name: str) -> Manifest:
    body = repo.sealer.open(stored, b"capsule:snapshots", f"snapshots file {name[:12]}")
    if body[:1] == b"\x01":
        body = b"\x00" + zstandard.ZstdDecompressor().decompress(body[1:])
    if body[:1] != b"\x00":
        raise IntegrityError(f"snapshots file {name[:12]} has an unknown encoding")
    return Manifest.model_validate_json(body[1:])
