"""Which snapshots are of which source, and how a user narrows them down (restic's `--host`,
`--path` and `--tag`).

Pure rules: the caller resolves paths and reads the host name and SQLite's own answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from capsule.domain.manifest import Manifest, SourceIdentity


def other_source(snapshot: SourceIdentity, live: SourceIdentity) -> str | None:
    """Why `snapshot` is a copy of another source than `live`, or None if it is of the same one.

    Another host or another resolved path is another source; so is another non-zero SQLite
    application id (0 means the program set none, which says nothing). A different schema is not:
    the shop's program changes its tables when it is upgraded (see `schema_changed`).
    """
    if snapshot.host != live.host or snapshot.path != live.path:
        return f"it is a snapshot of {snapshot.describe()}, not of {live.describe()}"
    if snapshot.application_id and live.application_id and snapshot.application_id != live.application_id:
        return (
            f"it is a snapshot of a database with SQLite application id {snapshot.application_id}, "
            f"but {live.path} has application id {live.application_id}"
        )
    return None


def schema_changed(snapshot: SourceIdentity, live: SourceIdentity) -> bool:
    """Whether both schemas are known and differ: normal after the shop's program was upgraded."""
    return bool(
        snapshot.schema_sha256 and live.schema_sha256 and snapshot.schema_sha256 != live.schema_sha256
    )


class SnapshotFilter(BaseModel):
    """restic's filters: a snapshot passes when each given kind of filter matches it.

    `hosts`: its host is one of them. `paths`: its source path is one of them (a snapshot has one
    source, so several paths mean any of them). `tags`: for at least one group, it has every tag of
    the group (`--tag a,b --tag c` means a and b, or c).
    """

    model_config = ConfigDict(frozen=True)

    hosts: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    tags: tuple[frozenset[str], ...] = ()

    @classmethod
    def of(
        cls, hosts: Iterable[str] = (), paths: Iterable[str] = (), tags: Iterable[str] = ()
    ) -> SnapshotFilter:
        """A filter from option values; each tag value is a comma-separated group."""
        groups = tuple(frozenset(t for t in value.split(",") if t) for value in tags)
        return cls(hosts=frozenset(hosts), paths=frozenset(paths), tags=tuple(g for g in groups if g))

    @property
    def chooses_source(self) -> bool:
        """Whether the user named a host or a path, instead of the configured source."""
        return bool(self.hosts or self.paths)

    def matches(self, manifest: Manifest) -> bool:
        identity = manifest.source_identity()
        if self.hosts and identity.host not in self.hosts:
            return False
        if self.paths and identity.path not in self.paths:
            return False
        return not self.tags or any(group <= set(manifest.tags) for group in self.tags)
