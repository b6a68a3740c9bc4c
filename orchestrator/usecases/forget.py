"""Use cases of retention: apply each kind's policy (`capsule forget`), forget snapshots by hand
(`capsule forget SNAPSHOT`, later `DELETE /api/backups/{id}`), and tag them (`capsule tag`; the
tag `keep` pins a snapshot against every policy).

Forgetting is recorded in the event log before the manifest is deleted, under the repository's
shared lock; `orchestrator/forgetting.py` says why a kill, a second run or a second process at
once leaves nothing wrong. Until a killed forget is finished by the next, the read models (`capsule
status`) leave its snapshots out; `capsule snapshots`, which reads the repository, still lists
them. A forgotten snapshot's data stays in its packs until `prune` reclaims what no snapshot uses.

Snapshots are judged per group: one kind of one source (host and path), as restic groups them,
each with its kind's policy, on the shop's clock (`timezone`, else the machine's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from capsule.domain.errors import CapsuleError, Category
from capsule.domain.retention import PIN_TAG, decide_retention, describe
from capsule.orchestrator import faults
from capsule.orchestrator.forgetting import FORGET_JUDGED, ForgetRun, aware, groups
from capsule.orchestrator.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from capsule.domain.events import SnapshotForgotten
    from capsule.domain.manifest import Manifest


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

    with ForgetRun(settings, request.actor) as run:
        repo = open_repository(settings)
        with locked(repo.backend, "forget", timeout=settings.lock_wait_seconds):
            present = run.present(repo)
            completed = run.complete_earlier(repo, request.dry_run)
            judged: list[Judged] = []
            rules: dict[str, Any] = {}
            for (kind, source), group in groups(run.live(present)).items():
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
            events = [
                run.forgotten(
                    j.snapshot_id,
                    j.kind,
                    j.time,
                    reason="policy",
                    policy=rules[j.kind],
                    rule=f"{'; '.join(j.reasons)} ({describe(run.document.retention.policy(j.kind))})",
                )
                for j in judged
                if not j.keep
            ]
            _sort(report, events, run.record_then_delete(repo, events))
            return report


def forget_snapshots(settings: Settings, request: ForgetByHand) -> ForgetReport:
    """Forget the snapshots named; `ForgetRefused` for the last of a kind of a source or a pinned
    one unless forced."""
    from capsule.adapters.repository.lock import locked  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415
    from capsule.orchestrator.usecases.snapshots import configured_sources, resolve_snapshot  # noqa: PLC0415

    if not request.snapshots:
        raise InvalidRequest("name at least one snapshot to forget, or none to apply the retention policies")
    with ForgetRun(settings, request.actor) as run:
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
                    aware(m.time),
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
            events = [
                run.forgotten(j.snapshot_id, j.kind, j.time, reason="by hand", forced=j.snapshot_id in forced)
                for j in judged
            ]
            _sort(report, events, run.record_then_delete(repo, events))
            return report


def _sort(report: ForgetReport, events: list[SnapshotForgotten], recorded: list[bool]) -> None:
    """Each snapshot into the report's `forgotten`, or `meanwhile` when another process got there first."""
    for event, done in zip(events, recorded, strict=True):
        (report.forgotten if done else report.meanwhile).append(event.snapshot_id)


def tag_snapshot(settings: Settings, request: TagSnapshot) -> Tagged:
    """Add tags to a snapshot and remove others; `keep` pins it. Refused for a forgotten snapshot."""
    from capsule.domain.events import SnapshotTagsChanged  # noqa: PLC0415
    from capsule.orchestrator.errors import ConcurrencyConflict  # noqa: PLC0415
    from capsule.orchestrator.usecases.repository import open_repository  # noqa: PLC0415
    from capsule.orchestrator.usecases.snapshots import configured_sources, resolve_snapshot  # noqa: PLC0415

    _check_tags(request.add, request.remove)
    with ForgetRun(settings, request.actor) as run:
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


def forgotten_ids(settings: Settings, engine: Engine | None = None) -> set[str]:
    """Every snapshot the log says is forgotten, its manifest deleted or not yet (after a kill):
    what `prune` must count as gone whatever `snapshots/` still holds. Read through `engine` if
    given (a worker's own), else through a runtime opened for it."""
    from capsule.orchestrator import projections  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime  # noqa: PLC0415

    if engine is not None:
        marks = projections.snapshot_marks_of(engine)
    else:
        runtime = Runtime(settings)
        try:
            marks = projections.snapshot_marks_of(runtime.engine)
        finally:
            runtime.close()
    return {sid for sid, mark in marks.items() if mark["forgotten_at"] is not None}


# ---- the parts --------------------------------------------------------------------------------


def _refusals(
    run: ForgetRun, live: list[tuple[str, Manifest]], chosen: dict[str, Manifest], force: bool
) -> set[str]:
    """The chosen snapshots only `force` lets go (pinned, or the last of their group); refused
    without it."""
    forced: set[str] = set()
    for (kind, source), group in groups(live).items():
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


def _check_tags(add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    if not add and not remove:
        raise InvalidRequest("say what to change: --add TAG or --remove TAG (the tag `keep` pins a snapshot)")
    for tag in (*add, *remove):
        if not tag or any(c.isspace() or c == "," for c in tag):
            raise InvalidRequest(f"{tag!r} is not a tag: a tag is one word without spaces or commas")
