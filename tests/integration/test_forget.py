"""Retention applied in-process to a real repository: a history of snapshots spread over weeks
(copies of a real backup's manifest, each with its own time), a policy counted on the shop's
clock, the event log that records every forgetting, and the read models rebuilt from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event

from capsule.orchestrator import projections
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.forget import (
    ApplyRetention,
    ForgetByHand,
    ForgetRefused,
    InvalidRequest,
    SnapshotChangedMeanwhile,
    TagSnapshot,
    apply_retention,
    forget_snapshots,
    forgotten_ids,
    tag_snapshot,
)
from capsule.orchestrator.usecases.jobs import replay_log
from capsule.orchestrator.usecases.repository import open_repository
from capsule.orchestrator.usecases.settings import ChangeSetting, change
from tests.integration.helpers import Shop, in_process_settings

# Every 6 hours for 20 days, the last on Sunday 6 December 2026 at 18:00 UTC.
NEWEST = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)
TIMES = [NEWEST - timedelta(hours=6 * n) for n in range(80)]


def settings_of(shop: Shop) -> Settings:
    return in_process_settings(shop)


def set_values(settings: Settings, **values: str) -> None:
    for key, value in values.items():
        change(settings, ChangeSetting(key=key, value=value), actor="person:owner")


@pytest.fixture
def history(shop: Shop) -> tuple[Settings, dict[datetime, str]]:
    """A real backup's manifest saved again at each of TIMES: snapshot id by time."""
    settings = settings_of(shop)
    back_up(settings, Backup(kind="database", actor="person:test"))
    repo = open_repository(settings)
    ((real, manifest),) = list(repo.snapshots())
    made = {t: repo.save_snapshot(manifest.model_copy(update={"time": t})) for t in TIMES}
    repo.backend.remove("snapshots", real)
    set_values(settings, timezone="Europe/Madrid")
    return settings, made


def stored(settings: Settings) -> set[str]:
    return set(open_repository(settings).backend.list("snapshots"))


def log_of(settings: Settings) -> list[tuple[str, str, str, dict[str, object]]]:
    runtime = Runtime(settings)
    try:
        rows = runtime.store.read_all(0, 100_000)
    finally:
        runtime.close()
    return [(e.stream_id, e.type, e.metadata.actor, e.data) for e in rows]


def test_a_policy_keeps_what_its_rules_name_on_the_shops_clock_and_forgets_the_rest(history):
    settings, made = history
    set_values(
        settings,
        **{
            "retention.database.keep-last": "2",
            "retention.database.keep-hourly": "0",
            "retention.database.keep-daily": "3",
            "retention.database.keep-weekly": "2",
            "retention.database.keep-monthly": "0",
            "retention.database.keep-yearly": "0",
        },
    )
    report = apply_retention(settings, ApplyRetention(actor="person:owner"))
    # 19:00, 13:00, 07:00 and 01:00 in Madrid: each day's newest is its 19:00 snapshot.
    day = {t.astimezone(UTC): made[t] for t in TIMES}
    expected = {
        made[NEWEST]: ("last", "daily 2026-12-06", "weekly 2026-W49"),
        made[NEWEST - timedelta(hours=6)]: ("last",),
        day[datetime(2026, 12, 5, 18, tzinfo=UTC)]: ("daily 2026-12-05",),
        day[datetime(2026, 12, 4, 18, tzinfo=UTC)]: ("daily 2026-12-04",),
        day[datetime(2026, 11, 29, 18, tzinfo=UTC)]: ("weekly 2026-W48",),
    }
    assert {j.snapshot_id: j.reasons for j in report.judged if j.keep} == expected
    assert report.timezone == "Europe/Madrid"
    assert stored(settings) == set(expected)
    assert sorted(report.forgotten) == sorted(set(made.values()) - set(expected))
    forgotten = [(s, a, d) for s, t, a, d in log_of(settings) if t == "SnapshotForgotten"]
    assert len(forgotten) == len(TIMES) - len(expected)
    for stream, actor, data in forgotten:
        assert stream == f"snapshot-{data['snapshot_id']}"
        assert actor == "person:owner"
        assert data["reason"] == "policy"
        assert data["policy"]["keep-daily"] == 3
        assert "is kept by" in str(data["rule"]) or "older than" in str(data["rule"])


def test_a_dry_run_changes_nothing_and_a_second_run_forgets_nothing_more(history):
    settings, made = history
    set_values(settings, **{"retention.database.keep-last": "1", "retention.database.keep-hourly": "4"})
    before = log_of(settings)
    dry = apply_retention(settings, ApplyRetention(dry_run=True))
    assert dry.to_forget > 0 and dry.forgotten == []
    assert stored(settings) == set(made.values())
    assert log_of(settings) == before
    done = apply_retention(settings, ApplyRetention())
    assert sorted(done.forgotten) == sorted(j.snapshot_id for j in dry.judged if not j.keep)
    again = apply_retention(settings, ApplyRetention())
    assert again.forgotten == [] and again.to_forget == 0
    assert again.kept == done.kept


def test_a_pinned_snapshot_outlives_the_policy_and_needs_force_by_hand(history):
    settings, made = history
    oldest = made[TIMES[-1]]
    tagged = tag_snapshot(settings, TagSnapshot(oldest[:8], add=("keep", "year-end")))
    assert tagged.tags == ("keep", "year-end") and tagged.added == ("keep", "year-end")
    assert tag_snapshot(settings, TagSnapshot(oldest, add=("keep",))).added == ()
    set_values(settings, **{"retention.database.keep-last": "1", "retention.database.keep-hourly": "0"})
    report = apply_retention(settings, ApplyRetention())
    assert oldest in stored(settings)
    assert next(j for j in report.judged if j.snapshot_id == oldest).reasons[0] == "pinned"
    with pytest.raises(ForgetRefused, match="is pinned"):
        forget_snapshots(settings, ForgetByHand((oldest[:10],)))
    assert oldest in stored(settings)
    untagged = tag_snapshot(settings, TagSnapshot(oldest, remove=("keep",)))
    assert untagged.tags == ("year-end",)
    forget_snapshots(settings, ForgetByHand((oldest,)))
    assert oldest not in stored(settings)
    with pytest.raises(Exception, match="no snapshot matches"):
        tag_snapshot(settings, TagSnapshot(oldest, add=("keep",)))


def test_the_last_snapshot_of_a_source_goes_only_by_force(history):
    settings, made = history
    everything = tuple(made.values())
    with pytest.raises(ForgetRefused, match=r"is the last database snapshot of .*add --force"):
        forget_snapshots(settings, ForgetByHand(everything))
    assert stored(settings) == set(everything)
    report = forget_snapshots(settings, ForgetByHand(everything[:3]))
    assert sorted(report.forgotten) == sorted(everything[:3])
    forced = forget_snapshots(settings, ForgetByHand(everything[3:], force=True))
    assert len(forced.forgotten) == len(everything) - 3 and stored(settings) == set()
    data = [d for _, t, _, d in log_of(settings) if t == "SnapshotForgotten"]
    assert [d["forced"] for d in data] == [False] * 3 + [True] * (len(everything) - 3)
    assert {d["reason"] for d in data} == {"by hand"}


def test_a_request_that_names_nothing_or_a_bad_tag_is_refused(history):
    settings, made = history
    newest = made[NEWEST]
    with pytest.raises(InvalidRequest, match="--add TAG or --remove TAG"):
        tag_snapshot(settings, TagSnapshot(newest))
    with pytest.raises(InvalidRequest, match="not a tag"):
        tag_snapshot(settings, TagSnapshot(newest, add=("two words",)))
    with pytest.raises(InvalidRequest, match="name at least one snapshot"):
        forget_snapshots(settings, ForgetByHand(()))


def test_a_forgotten_snapshot_whose_manifest_is_still_there_is_not_tagged_and_goes_next_time(history):
    settings, made = history
    gone = made[TIMES[1]]
    backend = open_repository(settings).backend
    sealed = backend.read("snapshots", gone)
    forget_snapshots(settings, ForgetByHand((gone,)))
    backend.write("snapshots", gone, sealed)  # as if the forget had been killed before deleting it
    with pytest.raises(SnapshotChangedMeanwhile, match="was forgotten"):
        tag_snapshot(settings, TagSnapshot(gone, add=("keep",)))
    assert forgotten_ids(settings) == {gone}
    dry = apply_retention(settings, ApplyRetention(dry_run=True))
    assert dry.completed == [gone] and gone in stored(settings)
    assert gone not in {j.snapshot_id for j in dry.judged}
    report = apply_retention(settings, ApplyRetention())
    assert report.completed == [gone] and gone not in stored(settings)
    assert [d["snapshot_id"] for _, t, _, d in log_of(settings) if t == "SnapshotForgotten"].count(gone) == 1


def test_the_read_models_leave_forgotten_snapshots_out_and_replay_rebuilds_them(shop: Shop):
    settings = settings_of(shop)
    first = back_up(settings, Backup(kind="database", actor="person:test"))
    second = back_up(settings, Backup(kind="database", actor="person:test"))
    ids = [s.snapshots[0].snapshot_id for s in (first, second)]
    tag_snapshot(settings, TagSnapshot(ids[1], add=("keep",)))
    forget_snapshots(settings, ForgetByHand((ids[0],)))
    runtime = Runtime(settings)
    try:
        listed = [r["snapshot_id"] for r in projections.list_snapshots(runtime.engine, 10)]
        marks = projections.snapshot_marks_of(runtime.engine)
    finally:
        runtime.close()
    assert listed == [ids[1]]
    assert marks[ids[0]]["forget_reason"] == "by hand" and marks[ids[0]]["forgotten_by"].startswith("person:")
    assert marks[ids[1]]["tags_added"] == '["keep"]' and marks[ids[1]]["forgotten_at"] is None
    replay_log(settings)
    runtime = Runtime(settings)
    try:
        assert [r["snapshot_id"] for r in projections.list_snapshots(runtime.engine, 10)] == listed
        assert projections.snapshot_marks_of(runtime.engine) == marks
    finally:
        runtime.close()


def test_a_policy_run_brings_the_read_models_up_to_date_for_every_snapshot_it_forgets(history):
    settings, _ = history
    set_values(settings, **{"retention.database.keep-last": "3", "retention.database.keep-hourly": "0"})
    report = apply_retention(settings, ApplyRetention(actor="person:owner"))
    assert len(report.forgotten) > len(TIMES) / 2
    runtime = Runtime(settings)
    try:
        marks = projections.snapshot_marks_of(runtime.engine)
    finally:
        runtime.close()
    assert sorted(s for s, m in marks.items() if m["forgotten_at"] is not None) == sorted(report.forgotten)
    assert {marks[s]["forget_reason"] for s in report.forgotten} == {"policy"}
    replay_log(settings)
    runtime = Runtime(settings)
    try:
        assert projections.snapshot_marks_of(runtime.engine) == marks
    finally:
        runtime.close()


def test_a_policy_run_records_its_forgettings_in_statements_that_do_not_grow_with_them(history):
    settings, _ = history
    set_values(settings, **{"retention.database.keep-last": "3", "retention.database.keep-hourly": "0"})
    sent: list[str] = []

    def count(*args: object) -> None:
        sent.append(str(args[2]))

    event.listen(Engine, "before_cursor_execute", count)
    try:
        report = apply_retention(settings, ApplyRetention(actor="person:owner"))
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert len(report.forgotten) > len(TIMES) / 2
    # Each forgetting keeps its own event, but they are appended together: one insert of events,
    # one of seals, no savepoint per snapshot.
    assert sum(s.startswith("INSERT INTO events ") for s in sent) == 1
    assert sum(s.startswith("INSERT INTO event_chain ") for s in sent) == 1
    assert sum(s.startswith("SAVEPOINT") for s in sent) <= 1
    # The read models are read for all of them at once too (and once for the run's own marks).
    assert sum(s.startswith("SELECT snapshot_marks.") for s in sent) <= 2
    assert len(sent) < len(report.forgotten), sent
    assert len([e for e in log_of(settings) if e[1] == "SnapshotForgotten"]) == len(report.forgotten)
