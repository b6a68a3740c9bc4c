"""The settings aggregate through its use cases: each change an event, stale changes refused,
the read model rebuilt by replay."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from capsule.domain.settings import InvalidSetting
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.jobs import Audit, audit_events, replay_log
from capsule.orchestrator.usecases.settings import ChangeSetting, SettingsChangedMeanwhile, change, show


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")


def test_a_change_is_an_event_with_its_old_and_new_value_and_who_made_it(settings: Settings) -> None:
    assert show(settings).version == 0

    done = change(settings, ChangeSetting("schedules.database.cron", "30 * * * *"), actor="person:ana@till")

    assert (done.old, done.new, done.version) == ("0 * * * *", "30 * * * *", 1)
    view = show(settings)
    assert view.version == 1 and view.document.schedules["database"].cron == "30 * * * *"
    assert view.changed_by == "person:ana@till"
    (event,) = [e for e in audit_events(settings, Audit()).events if e.type == "SettingsChanged"]
    assert event.stream_id == "settings" and event.metadata.actor == "person:ana@till"
    assert event.data["changes"] == [
        {"key": "schedules.database.cron", "old": "0 * * * *", "new": "30 * * * *"}
    ]


def test_a_change_made_against_a_stale_version_is_refused_and_records_nothing(settings: Settings) -> None:
    change(settings, ChangeSetting("timezone", "Europe/Madrid"))
    change(settings, ChangeSetting("schedules.files.enabled", "off", expected_version=1))

    with pytest.raises(SettingsChangedMeanwhile, match="at version 2, not 1"):
        change(settings, ChangeSetting("schedules.files.enabled", "on", expected_version=1))

    view = show(settings)
    assert view.version == 2 and view.document.schedules["files"].enabled is False


def test_setting_a_value_it_already_has_records_nothing(settings: Settings) -> None:
    done = change(settings, ChangeSetting("schedules.files.cron", "0  3 * * 0"))
    assert (done.old, done.new, done.version) == ("0 3 * * 0", "0 3 * * 0", 0)
    assert show(settings).version == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schedules.database.cron", "61 * * * *", "schedules.database.cron: minute 61 is out of range 0-59"),
        ("timezone", "Mars/Olympus", "timezone: there is no time zone `Mars/Olympus`"),
        ("schedules.databse.cron", "0 * * * *", "did you mean `schedules.database.cron`?"),
    ],
)
def test_a_bad_change_names_the_key_and_records_nothing(settings: Settings, key, value, message) -> None:
    with pytest.raises(InvalidSetting) as caught:
        change(settings, ChangeSetting(key, value))
    assert message in str(caught.value)
    assert show(settings).version == 0


def test_replay_rebuilds_the_settings_read_model(settings: Settings) -> None:
    change(settings, ChangeSetting("timezone", "America/New_York"))
    change(settings, ChangeSetting("alerts.email", "owner@example.com"))
    before = show(settings)

    replay_log(settings)

    after = show(settings)
    assert (after.version, after.document, after.changed_at) == (
        before.version,
        before.document,
        before.changed_at,
    )
    assert after.document.alerts.email == ("owner@example.com",)


def test_settings_show_json_has_the_version_an_if_match_needs(settings: Settings, capsys) -> None:
    from capsule.api import render_settings

    change(settings, ChangeSetting("schedules.files.enabled", "false"))
    render_settings.shown(show(settings), as_json=True)
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1
    assert shown["settings"]["schedules"]["files"]["enabled"] is False
    assert shown["changed_at"].endswith("Z")


def _cli_set(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    from tests.integration.helpers import CAPSULE, clean_env

    env = {
        **clean_env(),
        "CAPSULE_HOME": str(settings.home),
        "CAPSULE_DATABASE": str(settings.database),
        "CAPSULE_REPOSITORY": str(settings.repository),
    }
    return subprocess.run(
        [*CAPSULE, "settings", "set", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_refuses_a_bad_value_with_exit_2_and_one_line(settings: Settings) -> None:
    proc = _cli_set(settings, "schedules.database.cron", "61 * * * *")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("capsule:")]
    assert errors == ["capsule: schedules.database.cron: minute 61 is out of range 0-59"]
    assert show(settings).version == 0


def test_a_negative_count_typed_as_it_is_gets_the_settings_answer_not_an_option_error(
    settings: Settings,
) -> None:
    """`-1` is a value to refuse with the key's rule, not an unknown option the shell user must
    escape with `--`; options after the value still work."""
    proc = _cli_set(settings, "retention.database.keep-last", "-1")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("capsule:")]
    assert errors == [
        "capsule: retention.database.keep-last: -1 is negative; give 0 (the rule keeps nothing) or more"
    ]
    assert "No such option" not in proc.stderr
    assert show(settings).version == 0
    done = _cli_set(settings, "retention.database.keep-last", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1
