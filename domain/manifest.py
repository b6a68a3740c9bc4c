"""Snapshot manifests: what one snapshot holds, complete by itself.

A manifest never points at another snapshot's content, only at blobs by id; the `parent` field is
informational (what the backup compared against), so forgetting any snapshot never breaks another.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.errors import UnsafePath

MANIFEST_VERSION = 1

SnapshotKind = Literal["database", "files"]


class SqliteInfo(BaseModel):
    """What the database looked like when it was snapshotted."""

    model_config = ConfigDict(frozen=True)

    page_size: int
    page_count: int
    journal_mode: str
    pages_per_chunk: int


class Entry(BaseModel):
    """One file in a snapshot: its metadata, its SHA-256 and the blobs that hold its bytes in order.

    `blobs` lists data blob ids directly; a large file lists `blob_lists` instead, ids of list blobs
    whose plaintext is the concatenation of 32-byte data blob ids.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    type: Literal["file"] = "file"
    size: int = Field(ge=0)
    mode: int
    mtime_ns: int
    inode: int | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    blobs: list[str] = Field(default_factory=list)
    blob_lists: list[str] = Field(default_factory=list)
    sqlite: SqliteInfo | None = None

    @field_validator("path")
    @classmethod
    def _path_is_relative_and_inside(cls, value: str) -> str:
        check_relative_path(value)
        return value


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
    parent: str | None = None
    tags: list[str] = Field(default_factory=list)
    job_id: str | None = Field(None, description="the backup job that wrote it, if one did")
    entries: list[Entry]
    totals: Totals


def check_relative_path(value: str) -> PurePosixPath:
    """Return `value` as a relative path, or raise UnsafePath if it could leave its root."""
    if not value or "\x00" in value or "\\" in value:
        raise UnsafePath(f"the path {value!r} is not a valid relative path")
    path = PurePosixPath(value)
    parts = value.split("/")
    if path.is_absolute() or ".." in parts:
        raise UnsafePath(f"the path {value!r} tries to leave the restore folder; refusing it")
    if "" in parts or "." in parts:
        raise UnsafePath(f"the path {value!r} is not a canonical relative path")
    return path
