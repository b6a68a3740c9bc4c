"""Forgetting snapshots, step by step: the parts the `forget` and `tag` use cases share.

Why a forget is safe to kill at any moment, and to run twice or in two processes at once:
1. the verdicts are made under the repository's shared lock; a prune running meanwhile counts
   every manifest still in `snapshots/` as in use, so a forgetting it does not yet see only leaves
   that snapshot's data for the next prune;
2. a `SnapshotForgotten` event goes to the snapshot's own stream (`snapshot-<id>`), appended at
   the version read: of two processes forgetting one snapshot, the second meets the first's event,
   reads the stream again and records nothing (nor does a policy's forgetting of a snapshot pinned
   meanwhile);
3. only then is the manifest deleted; deleting one already gone changes nothing.
A kill between 2 and 3 leaves a manifest the log says is forgotten: every later forget (dry runs
aside) deletes those first, and so does a prune before it plans.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from capsule.domain.retention import PIN_TAG, Candidate
from capsule.orchestrator import faults
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from capsule.adapters.repository.repo import Repository
    from capsule.domain.events import SnapshotForgotten
    from capsule.domain.manifest import Manifest
    from capsule.orchestrator.runtime import Runtime

FORGET_JUDGED = "forget:judged"
"""Fault point: the verdicts are made, nothing recorded yet."""
FORGET_RECORDED = "forget:recorded"
"""Fault point: the forgetting is in the log, the manifest not yet deleted."""


class ForgetRun:
    """One forget or tag run: the event log, the settings, the marks the log holds, the clock's zone."""

    def __init__(self, settings: Settings, actor: str | None) -> None:
        import json  # noqa: PLC0415

        from capsule.domain import settings as document  # noqa: PLC0415
        from capsule.orchestrator import projections  # noqa: PLC0415
        from capsule.orchestrator.runtime import Runtime, new_job_id, person  # noqa: PLC0415

        self.runtime: Runtime = Runtime(settings)
        self.run_id = new_job_id()
        self.actor = actor or person()
        row = projections.settings_row(self.runtime.engine)
        self.document = document.from_values(json.loads(row["changed_values"]) if row else {})
        self.zone_name, self.zone = zone_of(self.document.timezone)
        self.marks = projections.snapshot_marks_of(self.runtime.engine)

    def __enter__(self) -> ForgetRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.runtime.close()

    def is_forgotten(self, sid: str) -> bool:
        mark = self.marks.get(sid)
        return mark is not None and mark["forgotten_at"] is not None

    def present(self, repo: Repository) -> list[tuple[str, Manifest]]:
        return list(repo.snapshots())

    def live(self, present: list[tuple[str, Manifest]]) -> list[tuple[str, Manifest]]:
        return [(sid, m) for sid, m in present if not self.is_forgotten(sid)]

    def complete_earlier(self, repo: Repository, dry_run: bool) -> list[str]:
        """Delete the manifests of snapshots the log says are forgotten (none in a dry run)."""
        left = sorted(sid for sid in repo.backend.list("snapshots") if self.is_forgotten(sid))
        if not dry_run:
            for sid in left:
                repo.backend.remove("snapshots", sid)
        return left

    def tags(self, sid: str, manifest: Manifest) -> tuple[str, ...]:
        import json  # noqa: PLC0415

        tags = set(manifest.tags)
        mark = self.marks.get(sid)
        if mark is not None:
            tags = (tags - set(json.loads(mark["tags_removed"]))) | set(json.loads(mark["tags_added"]))
        return tuple(sorted(tags))

    def candidate(self, sid: str, manifest: Manifest) -> Candidate:
        return Candidate(sid, aware(manifest.time), frozenset(self.tags(sid, manifest)))

    def forgotten(
        self,
        snapshot_id: str,
        kind: str,
        time: datetime,
        *,
        reason: str,
        policy: dict[str, Any] | None = None,
        rule: str | None = None,
        forced: bool = False,
    ) -> SnapshotForgotten:
        """The event that records the forgetting of one snapshot by this run."""
        from capsule.domain.events import SnapshotForgotten  # noqa: PLC0415

        return SnapshotForgotten.model_validate(
            {
                "job_id": self.run_id,
                "snapshot_id": snapshot_id,
                "kind": kind,
                "time": time,
                "reason": reason,
                "policy": policy,
                "rule": rule,
                "forced": forced,
            }
        )

    def append(self, sid: str, version: int, event: Any, conn: Any = None) -> list[Any]:
        """Append `event` to the snapshot's stream, read models included; its stored form."""
        from capsule.orchestrator import codec  # noqa: PLC0415
        from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415

        return self.runtime.store.append(
            codec.snapshot_stream_id(sid),
            version,
            [codec.encode(event)],
            Metadata(actor=self.actor, correlation_id=self.run_id),
            handlers=[self.runtime.handler],
            conn=conn,
        )

    def record_then_delete(self, repo: Repository, events: list[SnapshotForgotten]) -> list[bool]:
        """Record every forgetting, in one transaction, then delete their manifests; for each event,
        False when another process forgot that snapshot (or pinned it, for a policy's forgetting)
        meanwhile. One transaction, because each of its commits waits for the disk: forgetting a
        month of hourly snapshots at once costs one wait, not hundreds. Every snapshot keeps its own
        event in its own stream, but they go in one append, whose statements do not grow with them
        (EventStore.append_streams); the read models are brought up to date once, at its end."""
        if not events:
            return []
        from capsule.orchestrator import codec  # noqa: PLC0415
        from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415

        store = self.runtime.store
        with store.transaction() as conn:
            streams = [codec.snapshot_stream_id(event.snapshot_id) for event in events]
            now = store.stream_versions(streams, conn=conn)
            appends: dict[str, tuple[str, int, list[Any]]] = {}
            recorded = []
            for event, stream in zip(events, streams, strict=True):
                version = self._version_for(event, now.get(stream, 0), conn)
                done = version is not None and stream not in appends
                if version is not None and done:
                    appends[stream] = (stream, version, [codec.encode(event)])
                recorded.append(done)
            stored = store.append_streams(
                list(appends.values()), Metadata(actor=self.actor, correlation_id=self.run_id), conn=conn
            )
            self.runtime.handler(conn, stored)
        faults.point(FORGET_RECORDED)
        for event, done in zip(events, recorded, strict=True):
            if done:
                repo.backend.remove("snapshots", event.snapshot_id)
        return recorded

    def _version_for(self, event: SnapshotForgotten, current: int, conn: Any) -> int | None:
        """The version to append the forgetting at, the stream being at `current`; None when another
        process forgot the snapshot since the verdicts (or pinned it, for a policy's forgetting)."""
        mark = self.marks.get(event.snapshot_id)
        if current == (int(mark["version"]) if mark else 0):
            return current
        version, forgotten, pinned = self._stream_now(event.snapshot_id, conn)
        if forgotten or (pinned and event.reason == "policy"):
            return None
        return version

    def _stream_now(self, sid: str, conn: Any = None) -> tuple[int, bool, bool]:
        """The stream's version, whether it holds a forgetting, and whether `keep` was added last."""
        from capsule.domain.events import SnapshotForgotten, SnapshotTagsChanged  # noqa: PLC0415
        from capsule.orchestrator import codec  # noqa: PLC0415

        stored = self.runtime.store.read_stream(codec.snapshot_stream_id(sid), conn=conn)
        events = [codec.decode(e) for e in stored]
        forgotten = any(isinstance(e, SnapshotForgotten) for e in events)
        # Unpinned to start with: a snapshot whose manifest holds `keep` was judged pinned and kept,
        # unless the log removed the tag, which these events replay.
        pinned = False
        for e in events:
            if isinstance(e, SnapshotTagsChanged):
                pinned = (pinned or PIN_TAG in e.added) and PIN_TAG not in e.removed
        return (stored[-1].version if stored else 0), forgotten, pinned


def groups(snapshots: Iterable[tuple[str, Manifest]]) -> dict[tuple[str, str], list[tuple[str, Manifest]]]:
    """Snapshots by (kind, source), each group oldest first, groups in kind then source order."""
    groups: dict[tuple[str, str], list[tuple[str, Manifest]]] = {}
    for sid, manifest in sorted(snapshots, key=lambda s: (aware(s[1].time), s[0])):
        groups.setdefault((manifest.kind, manifest.source_identity().describe()), []).append((sid, manifest))
    return dict(sorted(groups.items()))


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def zone_of(name: str | None) -> tuple[str, tzinfo]:
    """The zone periods are counted in: the one set, else this process's (`TZ`), else the machine's."""
    import os  # noqa: PLC0415
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    from capsule.orchestrator.usecases.settings import machine_timezone  # noqa: PLC0415

    chosen = name or os.environ.get("TZ", "").lstrip(":") or machine_timezone()
    try:
        return chosen, ZoneInfo(chosen)
    except (ZoneInfoNotFoundError, ValueError):
        local = datetime.now().astimezone().tzinfo or UTC
        return chosen, local
