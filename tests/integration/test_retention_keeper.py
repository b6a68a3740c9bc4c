"""Retention by itself, as `capsule serve` applies it: after each completed backup the policies are
applied by `system:retention`, a prune is requested at most once a day when something was forgotten,
and nothing happens when `retention.auto` is off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from capsule.orchestrator import projections
from capsule.orchestrator.retention import ACTOR, RetentionKeeper
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.settings import show
from tests.integration.test_forget import history, log_of, set_values, stored  # noqa: F401 (a fixture)

KEEP_TWO = {
    "retention.database.keep-last": "2",
    **{f"retention.database.keep-{rule}": "0" for rule in ("hourly", "daily", "weekly", "monthly", "yearly")},
}


def tick(settings: Settings, runtime: Runtime, keeper: RetentionKeeper) -> None:
    keeper.tick(datetime.now(UTC), show(settings).document)
    keeper.wait(60)


def prunes(runtime: Runtime) -> list[str]:
    return [row["job_id"] for row in projections.list_jobs(runtime.engine, job_type="prune")]


def test_after_a_backup_the_policies_are_applied_and_one_prune_a_day_is_requested(
    history: tuple[Settings, dict[datetime, str]],  # noqa: F811
) -> None:
    settings, made = history
    set_values(settings, **KEEP_TWO)
    runtime = Runtime(settings)
    try:
        keeper = RetentionKeeper(runtime)
        tick(settings, runtime, keeper)
        newest = sorted(made)[-2:]
        assert stored(settings) == {made[t] for t in newest}
        actors = {a for _, t, a, _ in log_of(settings) if t == "SnapshotForgotten"}
        assert actors == {ACTOR}
        (first,) = prunes(runtime)

        forgotten_before = len([e for e in log_of(settings) if e[1] == "SnapshotForgotten"])
        tick(settings, runtime, keeper)  # no backup since: nothing to do
        assert len([e for e in log_of(settings) if e[1] == "SnapshotForgotten"]) == forgotten_before

        back_up(settings, Backup(kind="database", actor="person:test"))
        tick(settings, runtime, keeper)
        assert len(stored(settings)) == 2, "the new backup was not followed by the policies"
        assert prunes(runtime) == [first], "a second prune within a day"

        later = datetime.now(UTC) + timedelta(hours=25)
        back_up(settings, Backup(kind="database", actor="person:test"))
        keeper.tick(later, show(settings).document)
        keeper.wait(60)
        assert len(prunes(runtime)) == 2, "no prune a day later, though a snapshot was forgotten"
    finally:
        runtime.close()


def test_nothing_is_forgotten_by_itself_when_retention_auto_is_off(
    history: tuple[Settings, dict[datetime, str]],  # noqa: F811
) -> None:
    settings, made = history
    set_values(settings, **KEEP_TWO, **{"retention.auto": "false"})
    runtime = Runtime(settings)
    try:
        tick(settings, runtime, RetentionKeeper(runtime))
        assert stored(settings) == set(made.values())
        assert prunes(runtime) == []
    finally:
        runtime.close()
