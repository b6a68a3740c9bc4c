"""A reader following the log by position sees every event once and in order while others append.

On PostgreSQL a position is drawn at insert and becomes visible at commit; the appenders here pause
inside their transactions after inserting, so that without the store's serialisation a later
position would commit first and the follower would pass over an earlier one for good.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from capsule.orchestrator.db import make_engine
from capsule.orchestrator.eventstore import EventStore, Metadata, NewEvent, StoredEvent

APPENDERS = 4
APPENDS_EACH = 25
PAGE = 5
META = Metadata(actor="worker", correlation_id="follow")


def pause_inside(rng: random.Random) -> Callable[[Connection, list[StoredEvent]], None]:
    return lambda conn, stored: time.sleep(rng.uniform(0, 0.004))


def test_follower_sees_every_event_exactly_once_in_order(event_store_url: str, event_store_engine: Engine):
    appended: list[int] = []
    failures: list[BaseException] = []
    finished = threading.Event()
    seen: list[StoredEvent] = []
    polls_while_appending = 0

    def append_many(i: int) -> None:
        engine = make_engine(event_store_url)
        store, rng, version = EventStore(engine), random.Random(i), 0
        try:
            for n in range(APPENDS_EACH):
                batch = [
                    NewEvent("StepDone", 1, {"appender": i, "n": n, "k": k}) for k in range(rng.randint(1, 3))
                ]
                store.append(f"job-{i}", version, batch, META, handlers=[pause_inside(rng)])
                version += len(batch)
            appended.append(version)
        except BaseException as e:
            failures.append(e)
        finally:
            engine.dispose()

    def follow() -> None:
        nonlocal polls_while_appending
        engine = make_engine(event_store_url)
        store, after = EventStore(engine), 0
        try:
            while True:
                # Read the flag first: an empty page read after every appender finished is the end.
                done = finished.is_set()
                page = store.read_all(after_position=after, limit=PAGE)
                seen.extend(page)
                if page:
                    after = page[-1].position
                elif done:
                    return
                polls_while_appending += not done
        except BaseException as e:
            failures.append(e)
        finally:
            engine.dispose()

    follower = threading.Thread(target=follow)
    appenders = [threading.Thread(target=append_many, args=(i,)) for i in range(APPENDERS)]
    follower.start()
    for t in appenders:
        t.start()
    for t in appenders:
        t.join()
    finished.set()
    follower.join()

    assert failures == []
    positions = [e.position for e in seen]
    assert all(a < b for a, b in itertools.pairwise(positions)), positions
    assert len({(e.stream_id, e.version) for e in seen}) == len(seen) == sum(appended)
    assert seen == EventStore(event_store_engine).read_all(limit=10_000)
    assert polls_while_appending > 10
    for i in range(APPENDERS):
        versions = [e.version for e in seen if e.stream_id == f"job-{i}"]
        assert versions == list(range(1, len(versions) + 1))
