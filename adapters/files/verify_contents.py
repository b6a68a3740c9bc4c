"""`verify --read-data`: every file of a files snapshot held to its size and SHA-256, as restore does.

A file of one blob (most images) is checked when the pack pass opens that blob anyway; a file of
several blobs is read whole once the packs are done. Files dedupe between snapshots, so each
distinct content is checked once, and the snapshots that hold a wrong one are looked up only if
there is one. A database snapshot's SHA-256 is left to restore: its content differs in every
snapshot, and reading each one whole would cost the size of the database for every snapshot kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from capsule.adapters.files.tree import iter_entries
from capsule.adapters.repository.entry_rules import check_content
from capsule.adapters.repository.repo import Repository
from capsule.adapters.repository.restore import blob_batches, locate_all, read_batch
from capsule.domain.errors import CapsuleError
from capsule.domain.manifest import Entry

ContentKey = tuple[str | None, int, tuple[str, ...], tuple[str, ...]]


def content_key(entry: Entry) -> ContentKey:
    """What makes two file entries the same content: their digest, size and blobs."""
    return (
        entry.sha256,
        entry.size,
        tuple(b.lower() for b in entry.blobs),
        tuple(b.lower() for b in entry.blob_lists),
    )


class Contents:
    """The distinct files of the files snapshots and, once read, those whose bytes are wrong."""

    def __init__(self) -> None:
        self.single: dict[bytes, set[tuple[str | None, int]]] = {}  # blob id -> (sha256, size)
        self.several: dict[ContentKey, Entry] = {}
        self.wrong: dict[ContentKey, tuple[int, str]] = {}  # -> the size and SHA-256 found
        self.checked: set[bytes] = set()  # ids of `single` whose blob was found and compared

    def add(self, entry: Entry) -> None:
        if entry.type != "file":
            return
        if len(entry.blobs) == 1 and not entry.blob_lists:
            self.single.setdefault(bytes.fromhex(entry.blobs[0]), set()).add((entry.sha256, entry.size))
        else:
            self.several.setdefault(content_key(entry), entry)

    def found(self, blob_id: bytes, size: int, sha256: str) -> None:
        """A blob the pack pass authenticated, of `size` bytes with that SHA-256: check the one-blob
        files it is the content of."""
        expected = self.single.get(blob_id)
        if expected is None:
            return
        self.checked.add(blob_id)
        for want_sha256, want_size in expected:
            if (want_size, want_sha256) != (size, sha256):
                self.wrong[(want_sha256, want_size, (blob_id.hex(),), ())] = (size, sha256)

    def read_several(self, repo: Repository) -> int:
        """Read each file of several blobs whole and check it; return the bytes read."""
        read = 0
        for key, entry in self.several.items():
            found = _content_of(repo, entry)
            if found is None:
                continue  # a blob that cannot be read is reported with its pack
            read += found[0]
            if found != (entry.size, entry.sha256):
                self.wrong[key] = found
        return read

    def refused(self, repo: Repository) -> Iterator[tuple[str, str, str]]:
        """(snapshot id, path, message) for every file whose bytes are not what its entry says."""
        if not self.wrong:
            return
        for sid in sorted(repo.backend.list("snapshots")):
            try:
                manifest = repo.load_snapshot(sid)
                if manifest.kind != "files":
                    continue
                for entry in iter_entries(repo, manifest):
                    found = self.wrong.get(content_key(entry)) if entry.type == "file" else None
                    if found is None:
                        continue
                    try:
                        check_content(entry, *found)
                    except CapsuleError as e:
                        yield sid, entry.path, str(e)
            except CapsuleError:
                continue  # a manifest or tree that cannot be read is reported by the structure check


def _content_of(repo: Repository, entry: Entry) -> tuple[int, str] | None:
    """(size, SHA-256) of a file's bytes; None if a blob cannot be read."""
    sha = hashlib.sha256()
    size = 0
    try:
        for batch in blob_batches(locate_all(repo, entry)):
            data = read_batch(repo, batch)
            sha.update(data)
            size += len(data)
    except (CapsuleError, OSError):
        return None
    return size, sha.hexdigest()
