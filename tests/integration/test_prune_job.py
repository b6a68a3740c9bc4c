"""The prune job on a real event log and a real repository: one prune at a time, the grace period
that waits for the backups that may still refer to the old packs, what it reclaims, the status.

Snapshots are forgotten here by deleting their files through the repository backend, as the
forget command does once it has decided which ones go.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.files.restore import restore_files
from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.verify import verify
from capsule.domain.commands import CancelJob, CompleteStep, StartStep
from capsule.domain.errors import Category
from capsule.domain.prune_job import INDEX, PLAN, PLAN_STEP, WAIT
from capsule.orchestrator import projections
from capsule.orchestrator.actors import category_of, is_transient
from capsule.orchestrator.prunesteps import StillInUse, backups_to_wait_for, prune_plan, prune_wait
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.steps import StepContext
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.jobs import current_status, replay_log
from capsule.orchestrator.usecases.prune import Prune, repack_unused_percent, run_prune, stored_bytes
from capsule.orchestrator.usecases.repository import open_repository
from capsule.orchestrator.usecases.settings import ChangeSetting, change
from tests.integration.helpers import FAST_STEPS, Shop, in_process_settings, running

ACTOR = "person:test"
RESULTS: dict[str, dict[str, Any]] = {
    "plan": {"plan": {}, "bytes_before": 10, "unused_bytes": 4},
    "repack": {"repacked": {}, "packs_repacked": 0, "bytes_written": 0},
    "index": {"index_files": []},
}


def settings_of(shop: Shop, **changes: object) -> Settings:
    return in_process_settings(shop, **changes)


def step(rt: Runtime, job_type: str, job_id: str, name: str, result: dict[str, Any] | None = None) -> None:
    """Start `name` as a worker would, and complete it with `result` unless that is None."""
    rt.execute(
        job_type,
        job_id,
        lambda _: StartStep(
            job_id=job_id, now=rt.clock(), step=name, attempt=1, worker="w-test", lease=rt.lease
        ),
        actor=ACTOR,
    )
    if result is not None:
        rt.execute(
            job_type,
            job_id,
            lambda _: CompleteStep(job_id=job_id, now=rt.clock(), step=name, attempt=1, result=result),
            actor=ACTOR,
        )


def prune_through_index(rt: Runtime) -> str:
    """A prune whose plan, repack and index steps are recorded as done."""
    job_id = rt.request_prune(repack_unused_percent=10, actor=ACTOR)
    for name in PLAN[: PLAN.index(INDEX) + 1]:
        step(rt, "prune", job_id, name, RESULTS[name])
    return job_id


def index_position(rt: Runtime, job_id: str) -> int:
    return next(
        e.position
        for e in rt.store.read_stream(f"prune-{job_id}")
        if e.type == "StepCompleted" and e.data["step"] == INDEX
    )


@pytest.fixture
def runtime(shop: Shop) -> Any:
    rt = Runtime(settings_of(shop))
    yield rt
    rt.close()


def test_a_second_request_joins_the_prune_that_has_not_finished(runtime: Runtime) -> None:
    first = runtime.request_prune(repack_unused_percent=10, actor=ACTOR)
    assert runtime.request_prune(repack_unused_percent=10, actor=ACTOR) == first
    requested = [e for e in runtime.store.read_all(0, 1000) if e.type == "PruneRequested"]
    assert [e.stream_id for e in requested] == [f"prune-{first}"]

    runtime.execute("prune", first, lambda _: CancelJob(job_id=first, now=runtime.clock()), actor=ACTOR)
    second = runtime.request_prune(repack_unused_percent=10, actor=ACTOR)
    assert second != first
    assert projections.active_prune(runtime.engine) == second


def test_requests_made_at_once_start_one_prune(shop: Shop) -> None:
    settings = settings_of(shop)
    got: list[str] = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        rt = Runtime(settings)
        try:
            barrier.wait()
            got.append(rt.request_prune(repack_unused_percent=10, actor=ACTOR))
        finally:
            rt.close()

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rt = Runtime(settings)
    try:
        requested = [e for e in rt.store.read_all(0, 1000) if e.type == "PruneRequested"]
    finally:
        rt.close()
    assert len(requested) == 1 and set(got) == {requested[0].data["job_id"]}


def test_the_grace_period_waits_for_backups_that_began_storing_before_the_new_index(runtime: Runtime) -> None:
    early = runtime.request_backup(source="a.db", actor=ACTOR)
    step(runtime, "backup", early, "store")
    runtime.request_backup(source="b.db", actor=ACTOR)  # asked, never began storing: never counted
    prune = prune_through_index(runtime)
    late = runtime.request_backup(source="c.db", actor=ACTOR)
    step(runtime, "backup", late, "store")
    at = index_position(runtime, prune)

    assert backups_to_wait_for(runtime, at) == [early]
    runtime.execute("backup", early, lambda _: CancelJob(job_id=early, now=runtime.clock()), actor=ACTOR)
    assert backups_to_wait_for(runtime, at) == []


def test_the_wait_step_ends_once_the_backup_it_waits_for_finishes(shop: Shop, runtime: Runtime) -> None:
    early = runtime.request_backup(source="a.db", actor=ACTOR)
    step(runtime, "backup", early, "store")
    prune = prune_through_index(runtime)
    step(runtime, "prune", prune, WAIT)
    reports: list[tuple[int, int]] = []
    ctx = StepContext(
        settings=runtime.settings,
        job_id=prune,
        step=WAIT,
        attempt=1,
        request={"repack_unused_percent": 10},
        results=RESULTS,
        now=runtime.clock(),
        progress=lambda done, total: reports.append((done, total)),
    )
    outcome: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: outcome.update(prune_wait(ctx)))
    started = time.monotonic()
    waiter.start()
    time.sleep(3)
    assert waiter.is_alive(), "the grace period ended while a backup that may use the old packs runs"
    assert reports, "a waiting step reports, so that its lease is kept and a cancel can stop it"
    runtime.execute("backup", early, lambda _: CancelJob(job_id=early, now=runtime.clock()), actor=ACTOR)
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert outcome["backups"] == [early] and time.monotonic() - started >= 3


def test_status_says_never_before_the_first_prune_and_gives_the_repository_size(shop: Shop) -> None:
    settings = settings_of(shop)
    status = current_status(settings)
    assert status.space is not None
    assert status.space.last_job_id is None and status.space.unused_bytes is None
    on_disk = sum(
        p.stat().st_size for p in Path(shop.repository).rglob("*") if p.is_file() and "locks" not in p.parts
    )
    assert status.space.stored_bytes == on_disk
    assert status.space.stored_bytes == stored_bytes(open_backend(shop.repository)) > 0


# ---- the whole job, on a real repository ---------------------------------------------------


def on_disk(repository: Path) -> int:
    """The bytes of the repository's files as `du` would count them, locks and temporary files aside."""
    return sum(
        p.stat().st_size
        for p in repository.rglob("*")
        if p.is_file() and "locks" not in p.relative_to(repository).parts and not p.name.startswith(".")
    )


def age_packs(repository: Path, seconds: float = 3 * 3600) -> None:
    """Make every pack look written `seconds` ago: a prune leaves younger packs alone, since a
    backup running now may still adopt them."""
    when = time.time() - seconds
    for p in (repository / "data").rglob("*"):
        if p.is_file():
            os.utime(p, (when, when))


def write_images(folder: Path, names: range, rng: random.Random, size: int = 300 * 1024) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / f"img-{n:03}.jpg").write_bytes(rng.randbytes(size))


@pytest.fixture
def forgotten(shop: Shop) -> tuple[Settings, str, dict[str, str]]:
    """Two images snapshots, the first forgotten: most of its images are in no other snapshot.
    Returns the settings, the kept snapshot and the SHA-256 of each of its images."""
    settings = settings_of(shop, uploads=shop.root / "uploads", pack_size=1024 * 1024)
    rng = random.Random(7)
    write_images(settings.uploads, range(12), rng)
    first = back_up(settings, Backup(kind="files", actor=ACTOR)).snapshots[0].snapshot_id
    for n in range(2, 12):
        (settings.uploads / f"img-{n:03}.jpg").unlink()
    write_images(settings.uploads, range(20, 23), rng)
    kept = back_up(settings, Backup(kind="files", actor=ACTOR)).snapshots[0].snapshot_id
    open_backend(settings.repository).remove("snapshots", first)
    age_packs(settings.repository)
    images = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in settings.uploads.iterdir()}
    return settings, kept, images


def restores_as_before(settings: Settings, snapshot_id: str, images: dict[str, str], out: Path) -> None:
    repo = open_repository(settings)
    report = verify(repo, read_data=True)
    assert report.ok, [p.as_dict() for p in report.problems]
    restore_files(repo, repo.load_snapshot(snapshot_id), out, workers=0)
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert got == images


@pytest.mark.slow
def test_a_prune_gives_back_the_space_of_a_forgotten_snapshot(
    forgotten: tuple[Settings, str, dict[str, str]], tmp_path: Path
) -> None:
    settings, kept, images = forgotten
    before = on_disk(settings.repository)
    dry = run_prune(settings, Prune(dry_run=True))
    assert on_disk(settings.repository) == before, "a dry run changed the repository"
    assert dry.job_id is None and dry.bytes_before == before and dry.bytes_freed > 0 and dry.packs_deleted > 0

    done = run_prune(settings, Prune(actor=ACTOR))

    after = on_disk(settings.repository)
    assert (done.bytes_before, done.bytes_after) == (before, after)
    assert done.bytes_freed >= 10 * 300 * 1024 * 0.9 and after < before - done.bytes_freed / 2
    assert done.packs_deleted >= dry.packs_deleted and done.packs_rescued == 0
    restores_as_before(settings, kept, images, tmp_path / "out")
    space = current_status(settings).space
    assert space is not None and space.stored_bytes == after
    assert (space.last_job_id, space.last_freed, space.unused_bytes) == (
        done.job_id,
        done.bytes_freed,
        done.unused_bytes,
    )
    again = run_prune(settings, Prune(actor=ACTOR))
    assert (again.bytes_freed, again.packs_deleted) == (0, 0), "a second prune found more to delete"
    rt = Runtime(settings)
    try:
        events = [e.type for e in rt.store.read_all(0, 10_000) if e.stream_id == f"prune-{done.job_id}"]
        rows = projections.list_jobs(rt.engine, job_type="prune")
    finally:
        rt.close()
    assert events.count("PruneCompleted") == 1 and events.count("StepCompleted") == len(PLAN)
    replay_log(settings)
    rt = Runtime(settings)
    try:
        assert projections.list_jobs(rt.engine, job_type="prune") == rows and len(rows) == 2
    finally:
        rt.close()


def test_the_repack_threshold_read_through_a_runtime_is_the_setting_as_changed(
    shop: Shop, runtime: Runtime
) -> None:
    settings = runtime.settings
    assert repack_unused_percent(settings, runtime.engine) == repack_unused_percent(settings) == 10
    change(settings, ChangeSetting("retention.repack_unused_percent", "35"), actor=ACTOR)
    assert repack_unused_percent(settings, runtime.engine) == repack_unused_percent(settings) == 35


def test_the_plan_and_wait_steps_read_the_log_through_the_workers_runtime(
    forgotten: tuple[Settings, str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _, _ = forgotten
    rt = Runtime(settings)
    engine = rt.engine
    try:
        job_id = prune_through_index(rt)
        step(rt, "prune", job_id, WAIT)
        closed: list[bool] = []
        monkeypatch.setattr(rt, "close", lambda: closed.append(True))

        def refused(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("a step opened a runtime of its own: the log's schema checked again")

        monkeypatch.setattr(Runtime, "__init__", refused)

        def ctx(name: str) -> StepContext:
            return StepContext(
                settings=settings,
                job_id=job_id,
                step=name,
                attempt=1,
                request={"repack_unused_percent": 10},
                results=RESULTS,
                now=rt.clock(),
                progress=lambda done, total: None,
                runtime=rt,
            )

        planned = prune_plan(ctx(PLAN_STEP))
        waited = prune_wait(ctx(WAIT))
    finally:
        engine.dispose()
    assert planned["packs_to_delete"] > 0, "the forgotten snapshot's packs were not planned away"
    assert waited["backups"] == []
    assert not closed, "a step closed the worker's runtime"


# ---- killed at any point, finished by the next `capsule prune` ------------------------------

KILL_POINTS = [
    "plan:started",
    "plan:planned",
    "prune:repack-pack-written",
    "prune:repack-indexed",
    "repack:done",
    "prune:index-superseding",
    "prune:old-index-removed",
    "wait:started",
    "wait:waited",
    "prune:pack-deleted",
    "delete:done",
]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_prune_killed_at_any_point_is_finished_by_the_next_once(
    shop: Shop, forgotten: tuple[Settings, str, dict[str, str]], point: str, tmp_path: Path
) -> None:
    settings, kept, images = forgotten
    killed = shop.run("prune", env={**FAST_STEPS, "CAPSULE_FAULTS": point}, timeout=120)
    assert killed.returncode == -signal.SIGKILL, (
        f"{point} was not reached: {killed.returncode} {killed.stderr}"
    )

    finished = shop.run("prune", "--json", env=FAST_STEPS, expect=0, timeout=120)

    rt = Runtime(settings)
    try:
        (job,) = projections.list_jobs(rt.engine, job_type="prune")
        events = [e for e in rt.store.read_all(0, 10_000) if e.stream_id == f"prune-{job['job_id']}"]
    finally:
        rt.close()
    assert job["status"] == "completed" and json.loads(finished.stdout)["job_id"] == job["job_id"]
    assert [e.type for e in events].count("PruneCompleted") == 1
    steps = collections.Counter(e.data["step"] for e in events if e.type == "StepCompleted")
    assert steps == dict.fromkeys(PLAN, 1)
    assert on_disk(settings.repository) < 3 * 1024 * 1024  # the forgotten images are gone
    restores_as_before(settings, kept, images, tmp_path / "out")


@pytest.mark.slow
def test_a_backup_storing_when_the_prune_starts_is_not_held_up_and_the_prune_waits_for_it(
    shop: Shop, forgotten: tuple[Settings, str, dict[str, str]], tmp_path: Path
) -> None:
    settings, kept, images = forgotten
    # Held storing until the prune is waiting for it.
    release = shop.root / "release-the-backup"
    backup = shop.popen("backup", env={**FAST_STEPS, "CAPSULE_FAULTS": f"store:locked@until={release}"})
    with contextlib.closing(backup.stdout), contextlib.closing(backup.stderr):
        try:
            locks = settings.repository / "locks"
            deadline = time.monotonic() + 60
            while not (locks.is_dir() and any(not p.name.startswith(".") for p in locks.iterdir())):
                assert time.monotonic() < deadline and backup.poll() is None, "the backup never took its lock"
                time.sleep(0.05)

            pruning = shop.popen("prune", "--json", env=FAST_STEPS)
            with running(pruning):
                deadline = time.monotonic() + 60
                while not any(
                    j["job_type"] == "prune" and j["current_step"] == WAIT for j in shop.jobs_seen()
                ):
                    assert time.monotonic() < deadline and pruning.poll() is None, "the prune never waited"
                    time.sleep(0.05)
                release.touch()
                out, err = pruning.communicate(timeout=120)
            assert pruning.returncode == 0, err
        finally:
            release.touch()
        backup_ended = backup.wait(timeout=60)

    assert backup_ended == 0
    rt = Runtime(settings)
    try:
        backup_job = projections.list_jobs(rt.engine, job_type="backup")[0]  # the newest
        events = rt.store.read_all(0, 10_000)
    finally:
        rt.close()
    prune = json.loads(out)
    waited = next(
        e.data["result"]
        for e in events
        if e.stream_id == f"prune-{prune['job_id']}" and e.type == "StepCompleted" and e.data["step"] == WAIT
    )
    assert waited["backups"] == [backup_job["job_id"]] and waited["seconds"] > 0
    position = {(e.stream_id, e.type): e.position for e in events}
    assert (
        position[(f"backup-{backup_job['job_id']}", "BackupCompleted")]
        < position[(f"prune-{prune['job_id']}", "PruneCompleted")]
    ), "the prune deleted before the backup it waited for had finished"
    assert prune["bytes_freed"] > 0
    restores_as_before(settings, kept, images, tmp_path / "out")
    report = verify(open_repository(settings), read_data=True)
    assert report.ok and report.snapshots == 2, [p.as_dict() for p in report.problems]


def test_a_grace_period_not_over_within_its_bound_ends_the_attempt_to_be_tried_again(
    shop: Shop, runtime: Runtime
) -> None:
    early = runtime.request_backup(source="a.db", actor=ACTOR)
    step(runtime, "backup", early, "store")
    prune = prune_through_index(runtime)
    step(runtime, "prune", prune, WAIT)
    ctx = StepContext(
        settings=settings_of(shop, step_time_limit_seconds=2),  # half of it: one attempt's bound
        job_id=prune,
        step=WAIT,
        attempt=1,
        request={"repack_unused_percent": 10},
        results=RESULTS,
        now=runtime.clock(),
        progress=lambda done, total: None,
    )

    with pytest.raises(StillInUse, match=f"backup job\\(s\\) {early}") as raised:
        prune_wait(ctx)

    assert is_transient(raised.value) and category_of(raised.value) == Category.LOCKED
