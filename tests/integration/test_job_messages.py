"""Messages are hints: delivered twice, in random order or late, they change nothing.

The test plays the broker itself: it takes every message the dispatcher sends, delivers each one
twice in a shuffled order, and repeats until the job is over. The job must complete with each step
completed exactly once, one snapshot, and a restore equal to the source.
"""

from __future__ import annotations

import collections
import queue
import random
import time
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from capsule.domain.events import StepCompleted, StepStarted
from capsule.orchestrator.actors import QUEUE, Dispatcher
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from tests.integration.helpers import Shop, file_content_digest


def _settings(shop: Shop) -> Settings:
    return Settings(
        database=shop.database,
        repository=shop.repository,
        home=shop.home,
        step_lease_seconds=5,
        heartbeat_seconds=1,
        step_backoff_seconds=0.1,
        step_backoff_max_seconds=0.2,
    )


def _drain(broker: StubBroker) -> list[dramatiq.Message[object]]:
    out = []
    for name in (QUEUE, f"{QUEUE}.DQ"):
        q = broker.queues.get(name)
        while q is not None:
            try:
                out.append(dramatiq.Message.decode(q.get_nowait()))
            except queue.Empty:
                break
    return out


def _deliver_shuffled(runtime: Runtime, dispatcher: Dispatcher, job_id: str, seed: int) -> int:
    rng = random.Random(seed)
    by_name = {actor.actor_name: key for key, actor in dispatcher.actors.items()}
    delivered = 0
    deadline = time.monotonic() + 120
    while runtime.load(runtime.job_type_of(job_id), job_id).state.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, "the job did not finish"
        messages = _drain(dispatcher.broker)  # type: ignore[arg-type]
        if not messages:
            dispatcher.sweep()  # what a worker does periodically: the log says what is next
            time.sleep(0.05)
            continue
        batch = messages * 2
        rng.shuffle(batch)
        for message in batch:
            job_type, step = by_name[message.actor_name]
            dispatcher.run(job_type, step, *message.args)
            delivered += 1
    return delivered


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_backup_and_restore_with_every_message_twice_in_random_order(
    shop: Shop, tmp_path: Path, seed: int
) -> None:
    runtime = Runtime(_settings(shop))
    dispatcher = Dispatcher(runtime, StubBroker())
    try:
        job = runtime.request_backup(source=str(shop.database.resolve()), actor="person:test")
        dispatcher.enqueue_next("backup", job)
        # Stale and foreign hints too: a message for a later step, and one for a job nobody knows.
        dispatcher.enqueue("backup", job, "commit")
        dispatcher.enqueue("backup", "no-such-job", "store")
        delivered = _deliver_shuffled(runtime, dispatcher, job, seed)
        backup = runtime.load("backup", job)
        assert backup.state.status == "completed"
        assert delivered >= 4

        target = tmp_path / "out"
        sid = str(backup.state.snapshot_id)  # type: ignore[attr-defined]
        restore = runtime.request_restore(snapshot_id=sid, target=str(target), actor="person:test")
        dispatcher.enqueue_next("restore", restore)
        _deliver_shuffled(runtime, dispatcher, restore, seed)
        restored = runtime.load("restore", restore)
        assert restored.state.status == "completed"
    finally:
        runtime.close()

    for loaded in (backup, restored):
        completed = collections.Counter(e.step for e in loaded.events if isinstance(e, StepCompleted))
        started = collections.Counter(e.step for e in loaded.events if isinstance(e, StepStarted))
        assert set(completed.values()) == {1}, completed
        assert started == completed, "a duplicate message started a second attempt"
    assert len(shop.snapshots()) == 1
    assert file_content_digest(target / shop.db_name, immutable=True) == file_content_digest(
        shop.database, immutable=True
    )
