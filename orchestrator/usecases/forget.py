"""Use cases of retention: apply each kind's policy (`capsule forget`), forget snapshots by hand
(`capsule forget SNAPSHOT`, later `DELETE /api/backups/{id}`), and tag them (`capsule tag`; the
tag `keep` pins a snapshot against every policy).

Forgetting is recorded before it is done, so that a kill at any moment leaves nothing wrong:
1. a `SnapshotForgotten` event goes to the snapshot's own stream (`snapshot-<id>`), appended at
   the version read: of two processes forgetting one snapshot, the second meets the first's event
   and records nothing;
2. then the manifest is deleted from the repository, under its shared lock (`prune`, which takes
   the exclusive one, never runs in between).
A process killed between the two leaves a manifest the log says is forgotten. Every forget, dry
runs aside, first deletes those (`completed`), and no reader lists them meanwhile. A forgotten
snapshot's data stays in its packs until `prune` reclaims what no snapshot uses.

Snapshots are judged per group: one kind of one source (host and path), as restic groups them,
each with its kind's policy, on the shop's clock (`timezone`, else the machine's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from capsule.domain.errors import CapsuleError, Category
from capsule.domain.retention import PIN_TAG, Candidate, decide_retention, describe
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


class ForgetRefused(CapsuleError):
    """Raised when forgetting by hand would leave a kind of a source without any snapshot, or
    forget a pinned one, and `--force` was not given."""

    category = Category.REFUSED


class InvalidRequest(CapsuleError):
    """Raised when a tag is empty or holds a space or a comma, or a request names nothing to do."""

    category = Category.INVALID_INPUT


class SnapshotChangedMeanwhile(CapsuleError):
    """Raised when another process tagged or forgot a snapshot while this one was changing it."""

    category = Category.REFUSED


@dataclass(frozen=True)
class ApplyRetention:
    """Apply each kind's retention policy; `dry_run` says what would be forgotten and changes nothing."""

    dry_run: bool = False
    actor: str | None = None
    """Who asks; None: the person at this machine's terminal."""


@dataclass(frozen=True)
class ForgetByHand:
    """Forget the snapshots named (ids, unique prefixes, `latest-database`...)."""

    snapshots: tuple[str, ...]
    force: bool = False
    """Also the last snapshot of a kind of a source, and pinned ones."""
    dry_run: bool = False
    actor: str | None = None


@dataclass(frozen=True)
class Judged:
    """One snapshot and what became of it: kept, with every rule that keeps it, or forgotten, with why."""

    snapshot_id: str
    kind: str
    source: str
    time: datetime
    tags: tuple[str, ...]
    keep: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "kind": self.kind,
            "source": self.source,
            "time": self.time,
            "tags": list(self.tags),
            "action": "keep" if self.keep else "forget",
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class ForgetReport:
    """What a forget judged, recorded and deleted."""

    run_id: str
    """The id the run's events share (their `job_id` and correlation id)."""
    timezone: str
    dry_run: bool
    judged: list[Judged]
    """Per group (kind, then source), newest first."""
    forgotten: list[str] = field(default_factory=list)
    """Recorded as forgotten by this run, and their manifests deleted (none in a dry run)."""
    completed: list[str] = field(default_factory=list)
    """Forgotten earlier by a run that stopped before deleting their manifests: deleted now (in a
    dry run: still to delete)."""
    meanwhile: list[str] = field(default_factory=list)
    """Forgotten by another process while this one ran, or pinned meanwhile: nothing recorded here."""

    @property
    def kept(self) -> int:
        return sum(1 for j in self.judged if j.keep)

    @property
    def to_forget(self) -> int:
        return sum(1 for j in self.judged if not j.keep)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "timezone": self.timezone,
            "dry_run": self.dry_run,
            "snapshots": [j.as_dict() for j in self.judged],
            "kept": self.kept,
            "forgotten": self.forgotten
            if not self.dry_run
            else [j.snapshot_id for j in self.judged if not j.keep],
            "completed": self.completed,
            "meanwhile": self.meanwhile,
        }


@dataclass(frozen=True)
class TagSnapshot:
    snapshot: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    actor: str | None = None


@dataclass(frozen=True)
class Tagged:
    snapshot_id: str
    tags: tuple[str, ...]
    """Its tags now: the manifest's, with every change since."""
    added: tuple[str, ...]
    removed: tuple[str, ...]
    """What this request changed; both empty when the tags already were as asked."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "tags": list(self.tags),
            "added": list(self.added),
            "removed": list(self.removed),
            "pinned": PIN_TAG in self.tags,
        }


# ---- the runs ---------------------------------------------------------------------------------


def apply_retention(settings: Settings, request: ApplyRetention) -> ForgetReport:
    """Judge every snapshot by its kind's policy and forget those no rule keeps."""
    from capsule.adapters.repository.lock import locked  # noqa: PLC0415 - the repository loads slowly
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415

    with _Run(settings, request.actor) as run:
        repo = open_repository(settings)
        with locked(repo.backend, "forget", timeout=settings.lock_wait_seconds):
            present = run.present(repo)
            completed = run.complete_earlier(repo, request.dry_run)
            judged: list[Judged] = []
            rules: dict[str, Any] = {}
            for (kind, source), group in _groups(run.live(present)).items():
                policy = run.document.retention.policy(kind)
                rules[kind] = policy.model_dump(mode="json")
                verdicts = decide_retention(policy, [run.candidate(sid, m) for sid, m in group], run.zone)
                by_id = dict(group)
                judged += [
                    Judged(
                        v.snapshot_id,
                        kind,
                        source,
                        v.time,
                        run.tags(v.snapshot_id, by_id[v.snapshot_id]),
                        v.keep,
                        v.reasons,
                    )
                    for v in verdicts
                ]
            report = ForgetReport(run.run_id, run.zone_name, request.dry_run, judged, completed=completed)
            if request.dry_run:
                return report
            faults.point(FORGET_JUDGED)
            for j in judged:
                if j.keep:
                    continue
                policy = run.document.retention.policy(j.kind)
                event = run.forgotten(
                    j, "policy", rules[j.kind], f"{'; '.join(j.reasons)} ({describe(policy)})"
                )
                (report.forgotten if run.record_then_delete(repo, event) else report.meanwhile).append(
                    j.snapshot_id
                )
            return report


def forget_snapshots(settings: Settings, request: ForgetByHand) -> ForgetReport:
    """Forget the snapshots named; `ForgetRefused` for the last of a kind of a source or a pinned
    one unless forced."""
    from capsule.adapters.repository.lock import locked  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415
    from capsule.orchestrator.usecases.snapshots import configured_sources, resolve_snapshot  # noqa: PLC0415

    if not request.snapshots:
        raise InvalidRequest("name at least one snapshot to forget, or none to apply the retention policies")
    with _Run(settings, request.actor) as run:
        repo = open_repository(settings)
        with locked(repo.backend, "forget", timeout=settings.lock_wait_seconds):
            sources = configured_sources(settings)
            chosen = dict(resolve_snapshot(repo, ref, sources=sources) for ref in request.snapshots)
            present = run.present(repo)
            completed = run.complete_earlier(repo, request.dry_run)
            live = run.live(present)
            forced = _refusals(run, live, chosen, request.force)
            judged = [
                Judged(
                    sid,
                    m.kind,
                    m.source_identity().describe(),
                    _aware(m.time),
                    run.tags(sid, m),
                    False,
                    ("by hand (forced)",) if sid in forced else ("by hand",),
                )
                for sid, m in sorted(chosen.items(), key=lambda s: (s[1].time, s[0]), reverse=True)
                if sid in dict(live)
            ]
            report = ForgetReport(run.run_id, run.zone_name, request.dry_run, judged, completed=completed)
            if request.dry_run:
                return report
            for j in judged:
                event = run.forgotten(j, "by hand", None, None, forced=j.snapshot_id in forced)
                (report.forgotten if run.record_then_delete(repo, event) else report.meanwhile).append(
                    j.snapshot_id
                )
            return report


def tag_snapshot(settings: Settings, request: TagSnapshot) -> Tagged:
    """Add tags to a snapshot and remove others; `keep` pins it. Refused for a forgotten snapshot."""
    from capsule.domain.events import SnapshotTagsChanged  # noqa: PLC0415
    from capsule.orchestrator.errors import ConcurrencyConflict  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415
    from capsule.orchestrator.usecases.snapshots import configured_sources, resolve_snapshot  # noqa: PLC0415

    _check_tags(request.add, request.remove)
    with _Run(settings, request.actor) as run:
        repo = open_repository(settings)
        sid, manifest = resolve_snapshot(repo, request.snapshot, sources=configured_sources(settings))
        mark = run.marks.get(sid)
        if mark is not None and mark["forgotten_at"] is not None:
            raise SnapshotChangedMeanwhile(f"snapshot {sid[:12]} was forgotten; it can no longer be tagged")
        tags = run.tags(sid, manifest)
        added = tuple(t for t in dict.fromkeys(request.add) if t not in tags)
        removed = tuple(t for t in dict.fromkeys(request.remove) if t in tags and t not in added)
        if not added and not removed:
            return Tagged(sid, tags, (), ())
        event = SnapshotTagsChanged(job_id=run.run_id, snapshot_id=sid, added=added, removed=removed)
        try:
            run.append(sid, int(mark["version"]) if mark else 0, event)
        except ConcurrencyConflict as e:
            raise SnapshotChangedMeanwhile(
                f"snapshot {sid[:12]} was tagged or forgotten by another process meanwhile; "
                "run the command again"
            ) from e
        now = tuple(sorted((set(tags) | set(added)) - set(removed)))
        return Tagged(sid, now, added, removed)


def forgotten_ids(settings: Settings) -> set[str]:
    """Every snapshot the log says is forgotten, its manifest deleted or not yet (after a kill):
    what `prune` must count as gone whatever `snapshots/` still holds."""
    from capsule.orchestrator import projections  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    runtime = Runtime(settings)
    try:
        marks = projections.snapshot_marks_of(runtime.engine)
    finally:
        runtime.close()
    return {sid for sid, mark in marks.items() if mark["forgotten_at"] is not None}


# ---- the parts --------------------------------------------------------------------------------


class _Run:
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
        self.zone_name, self.zone = _zone(self.document.timezone)
        self.marks = projections.snapshot_marks_of(self.runtime.engine)

    def __enter__(self) -> _Run:
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
        return Candidate(sid, _aware(manifest.time), frozenset(self.tags(sid, manifest)))

    def forgotten(
        self,
        judged: Judged,
        reason: str,
        policy: dict[str, Any] | None,
        rule: str | None,
        *,
        forced: bool = False,
    ) -> SnapshotForgotten:
        from capsule.domain.events import SnapshotForgotten  # noqa: PLC0415

        return SnapshotForgotten.model_validate(
            {
                "job_id": self.run_id,
                "snapshot_id": judged.snapshot_id,
                "kind": judged.kind,
                "time": judged.time,
                "reason": reason,
                "policy": policy,
                "rule": rule,
                "forced": forced,
            }
        )

    def append(self, sid: str, version: int, event: Any) -> None:
        from capsule.orchestrator import codec  # noqa: PLC0415
        from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415

        self.runtime.store.append(
            codec.snapshot_stream_id(sid),
            version,
            [codec.encode(event)],
            Metadata(actor=self.actor, correlation_id=self.run_id),
            handlers=[self.runtime.handler],
        )

    def record_then_delete(self, repo: Repository, event: SnapshotForgotten) -> bool:
        """Record the forgetting, then delete the manifest; False when another process forgot it
        (or pinned it, for a policy's forgetting) meanwhile."""
        from capsule.orchestrator.errors import ConcurrencyConflict  # noqa: PLC0415

        sid = event.snapshot_id
        mark = self.marks.get(sid)
        try:
            self.append(sid, int(mark["version"]) if mark else 0, event)
        except ConcurrencyConflict:
            version, forgotten, pinned = self._stream_now(sid)
            if forgotten or (pinned and event.reason == "policy"):
                return False
            self.append(sid, version, event)
        faults.point(FORGET_RECORDED)
        repo.backend.remove("snapshots", sid)
        return True

    def _stream_now(self, sid: str) -> tuple[int, bool, bool]:
        """The stream's version, whether it holds a forgetting, and whether `keep` was added last."""
        from capsule.domain.events import SnapshotForgotten, SnapshotTagsChanged  # noqa: PLC0415
        from capsule.orchestrator import codec  # noqa: PLC0415

        stored = self.runtime.store.read_stream(codec.snapshot_stream_id(sid))
        events = [codec.decode(e) for e in stored]
        forgotten = any(isinstance(e, SnapshotForgotten) for e in events)
        pinned = False
        for e in events:
            if isinstance(e, SnapshotTagsChanged):
                pinned = (pinned or PIN_TAG in e.added) and PIN_TAG not in e.removed
        return (stored[-1].version if stored else 0), forgotten, pinned


def _refusals(
    run: _Run, live: list[tuple[str, Manifest]], chosen: dict[str, Manifest], force: bool
) -> set[str]:
    """The chosen snapshots only `force` lets go (pinned, or the last of their group); refused
    without it."""
    forced: set[str] = set()
    for (kind, source), group in _groups(live).items():
        ids = [sid for sid, _ in group]
        if ids and all(sid in chosen for sid in ids):
            newest = ids[-1]
            if not force:
                raise ForgetRefused(
                    f"snapshot {newest[:12]} is the last {kind} snapshot of {source}: forgetting it "
                    "leaves nothing to restore; add --force if that is what you want"
                )
            forced.update(ids)
    for sid, manifest in chosen.items():
        if PIN_TAG in run.tags(sid, manifest):
            if not force:
                raise ForgetRefused(
                    f"snapshot {sid[:12]} is pinned (tagged `{PIN_TAG}`); run `capsule tag {sid[:12]} "
                    f"--remove {PIN_TAG}` first, or add --force"
                )
            forced.add(sid)
    return forced


def _groups(snapshots: Iterable[tuple[str, Manifest]]) -> dict[tuple[str, str], list[tuple[str, Manifest]]]:
    """Snapshots by (kind, source), each group oldest first, groups in kind then source order."""
    groups: dict[tuple[str, str], list[tuple[str, Manifest]]] = {}
    for sid, manifest in sorted(snapshots, key=lambda s: (_aware(s[1].time), s[0])):
        groups.setdefault((manifest.kind, manifest.source_identity().describe()), []).append((sid, manifest))
    return dict(sorted(groups.items()))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _zone(name: str | None) -> tuple[str, tzinfo]:
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


def _check_tags(add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    if not add and not remove:
        raise InvalidRequest("say what to change: --add TAG or --remove TAG (the tag `keep` pins a snapshot)")
    for tag in (*add, *remove):
        if not tag or any(c.isspace() or c == "," for c in tag):
            raise InvalidRequest(f"{tag!r} is not a tag: a tag is one word without spaces or commas")
