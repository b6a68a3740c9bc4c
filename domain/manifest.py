"""Snapshot manifests: what one snapshot holds, complete by itself.

A manifest never points at another snapshot's content, only at blobs by id; the `parent` field is
informational (what the backup compared against), so forgetting any snapshot never breaks another.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capsule.domain.errors import UnsafePath

MANIFEST_VERSION = 2
PAGE_IDS_MANIFEST_VERSION = 3
READABLE_MANIFEST_VERSIONS = (1, 2, 3)
"""Version 2 added files snapshots (entry types, `tree`, `warnings`); a version 1 manifest reads as is.
Version 3 is a database snapshot whose entry leaves the file's SHA-256 out (its chunk ids stand for
it): only such a manifest is written as version 3, so that a Capsule that requires the SHA-256
refuses it as too new instead of as damaged; every other manifest is still written as version 2."""

SnapshotKind = Literal["database", "files"]
EntryType = Literal["file", "dir", "symlink"]
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class SqliteInfo(BaseModel):
    """What the database looked like when it was snapshotted."""

    model_config = ConfigDict(frozen=True)

    page_size: int
    page_count: int
    journal_mode: str
    pages_per_chunk: int


class SourceIdentity(BaseModel):
    """What a snapshot is a copy of: the machine, the resolved path and, for a database, what SQLite
    itself says about it.

    Two snapshots are of the same source when host and path are equal and their non-zero
    application ids (if both have one) are equal. The schema's hash changes when the shop's program
    upgrades its tables, so it tells such a change apart but does not make another source.
    """

    model_config = ConfigDict(frozen=True)

    host: str
    path: str
    application_id: int | None = Field(None, description="SQLite's `PRAGMA application_id` (0: unset)")
    page_size: int | None = None
    schema_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="SHA-256 of the schema (`schema_digest`)"
    )

    def describe(self) -> str:
        """The source in words, for messages: `/srv/pos.db on till-1`."""
        return f"{self.path} on {self.host}"


def schema_digest(statements: list[str]) -> str:
    """SHA-256 of a database's schema: its `sqlite_master.sql` texts, sorted, each followed by NUL."""
    return hashlib.sha256(b"".join(s.encode() + b"\x00" for s in sorted(statements))).hexdigest()


class Entry(BaseModel):
    """One item of a snapshot: a file, a folder or a symbolic link, with its metadata.

    A file has its SHA-256 (a database's may leave it out, see `_fields_fit_type`) and the blobs
    that hold its bytes in order: `blobs` lists data blob ids directly; a large file lists
    `blob_lists` instead, ids of list blobs whose plaintext is the concatenation of 32-byte data
    blob ids. A symbolic link has its `target`, stored as it is and
    never followed. A folder has neither.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    type: EntryType = "file"
    size: int = Field(0, ge=0)
    mode: int
    mtime_ns: int
    inode: int | None = None
    ctime_ns: int | None = None
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    target: str | None = None
    blobs: list[str] = Field(default_factory=list)
    blob_lists: list[str] = Field(default_factory=list)
    sqlite: SqliteInfo | None = None

    @field_validator("path")
    @classmethod
    def _path_is_relative_and_inside(cls, value: str) -> str:
        ensure_relative_path(value)
        return value

    @model_validator(mode="after")
    def _fields_fit_type(self) -> Entry:
        has_content = bool(self.blobs or self.blob_lists)
        if self.type == "file":
            # A database built on its parent's pages leaves the SHA-256 out (it would mean reading
            # every page): its pages' keyed ids, each checked as it is restored, stand for it.
            if self.sha256 is None and not (self.sqlite is not None and has_content):
                raise ValueError(f"the file {self.path!r} has no SHA-256")
            if self.target is not None:
                raise ValueError(f"the file {self.path!r} has a link target")
        elif self.type == "symlink":
            if not self.target or "\x00" in self.target:
                raise ValueError(f"the symbolic link {self.path!r} has no valid target")
            if has_content or self.size != len(self.target.encode()):
                raise ValueError(f"the symbolic link {self.path!r} has content")
        elif has_content or self.target is not None or self.size:
            raise ValueError(f"the folder {self.path!r} has content")
        return self


class Totals(BaseModel):
    """Figures of the backup that made the snapshot."""

    model_config = ConfigDict(frozen=True)

    files: int
    bytes: int
    blobs: int
    new_blobs: int
    new_bytes: int = Field(description="plaintext bytes of blobs this backup stored")
    stored_bytes: int = Field(description="bytes this backup added to the repository")
    changed_chunks: int | None = None
    read_files: int | None = Field(None, description="files whose bytes were read (the rest were reused)")
    warnings: int = Field(0, description="items skipped or kept from the parent snapshot, with a reason")
    duration_seconds: float


class Manifest(BaseModel):
    """A snapshot: kind, time, source, parent, entries and totals."""

    model_config = ConfigDict(frozen=True)

    version: int = MANIFEST_VERSION
    kind: SnapshotKind
    full: bool = False
    time: datetime
    hostname: str
    source: str
    identity: SourceIdentity | None = Field(
        None, description="what the snapshot is a copy of; absent in manifests written before it existed"
    )
    parent: str | None = None
    tags: list[str] = Field(default_factory=list)
    job_id: str | None = Field(None, description="the backup job that wrote it, if one did")
    entries: list[Entry] = Field(default_factory=list)
    tree: list[str] = Field(
        default_factory=list,
        description="files snapshots: ids of list blobs naming, in order, the tree blobs that hold "
        "the entries (read them with `iter_entries`)",
    )
    warnings: list[str] = Field(
        default_factory=list, description="`path: reason` for what was skipped or kept (the first ones)"
    )
    totals: Totals

    @model_validator(mode="after")
    def _version_allows_entries(self) -> Manifest:
        if self.version < PAGE_IDS_MANIFEST_VERSION and any(
            e.type == "file" and e.sha256 is None for e in self.entries
        ):
            raise ValueError(f"a version {self.version} manifest names a file without its SHA-256")
        return self

    def source_identity(self) -> SourceIdentity:
        """The snapshot's source; for an older manifest without one, its `hostname` and `source`."""
        return self.identity or SourceIdentity(host=self.hostname, path=self.source)


def check_relative_path(value: str) -> PurePosixPath:
    """Return `value` as a relative path, or raise UnsafePath if it could leave its root."""
    ensure_relative_path(value)
    return PurePosixPath(value)


def ensure_relative_path(value: str) -> None:
    """Raise UnsafePath unless `value` is a canonical relative path that stays inside its root.

    String checks only (a manifest of 100,000 entries runs this for each): an absolute path starts
    with "/", and any "", "." or ".." component is refused.
    """
    if not value or "\x00" in value or "\\" in value:
        raise UnsafePath(f"the path {value!r} is not a valid relative path")
    parts = value.split("/")
    if value[0] == "/" or ".." in parts:
        raise UnsafePath(f"the path {value!r} tries to leave the restore folder; refusing it")
    if "" in parts or "." in parts:
        raise UnsafePath(f"the path {value!r} is not a canonical relative path")
