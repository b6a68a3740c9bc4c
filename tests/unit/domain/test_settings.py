"""The settings document: its keys, values typed as a person types them, and what is refused."""

from __future__ import annotations

import pytest

from capsule.domain.settings import (
    BackupSettings,
    InvalidSetting,
    check_retention,
    from_values,
    keys,
    parse,
    value_of,
    with_changes,
)


def test_the_defaults_are_the_plans():
    defaults = BackupSettings()
    assert {name: s.cron for name, s in defaults.schedules.items()} == {
        "database": "0 * * * *",
        "database-full": "59 23 * * *",
        "files": "0 3 * * 0",
        "drill": "0 4 * * 0",
    }
    assert defaults.timezone is None
    assert all(s.enabled for s in defaults.schedules.values())


def test_every_key_reads_back_and_the_document_lists_them_in_order():
    names = keys()
    assert names[0] == "timezone"
    assert {"schedules.database.cron", "schedules.files.enabled", "retention.files.keep_daily"} <= set(names)
    assert {"alerts.email", "alerts.webhook"} <= set(names)
    for key in names:
        value_of(BackupSettings(), key)


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("schedules.files.enabled", "off", False),
        ("schedules.files.enabled", "Yes", True),
        ("retention.database.keep_daily", "14", 14),
        ("alerts.email", "a@example.com, b@example.com", ["a@example.com", "b@example.com"]),
        ("alerts.webhook", "", []),
        ("timezone", "Europe/Madrid", "Europe/Madrid"),
        ("timezone", "machine", None),
        ("schedules.database.cron", " 30 * * * * ", "30 * * * *"),
    ],
)
def test_a_value_is_read_by_its_keys_type(key, text, value):
    assert parse(BackupSettings(), key, text) == value


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("schedules.files.enabled", "maybe", "schedules.files.enabled: `maybe` is not true or false"),
        (
            "retention.database.keep_daily",
            "7.5",
            "retention.database.keep_daily: `7.5` is not a whole number",
        ),
        ("schedules.databse.cron", "0 * * * *", "did you mean `schedules.database.cron`?"),
        ("nothing.like.it", "1", "`capsule settings show` lists every key"),
    ],
)
def test_a_wrong_value_or_key_names_the_key_and_what_to_do(key, text, message):
    with pytest.raises(InvalidSetting) as caught:
        parse(BackupSettings(), key, text)
    assert message in str(caught.value)


def test_a_value_out_of_its_range_is_refused_by_the_document():
    with pytest.raises(InvalidSetting, match=r"keep_daily: input should be greater than"):
        with_changes(BackupSettings(), {"retention.database.keep_daily": -1})
    with pytest.raises(InvalidSetting, match=r"schedules\.files\.jitter_seconds"):
        with_changes(BackupSettings(), {"schedules.files.jitter_seconds": 7200})


def test_a_retention_policy_that_keeps_nothing_is_refused():
    everything_zero = {f"retention.files.{k}": 0 for k in ("keep_last", "keep_hourly", "keep_daily")}
    everything_zero |= {f"retention.files.{k}": 0 for k in ("keep_weekly", "keep_monthly", "keep_yearly")}
    document = with_changes(BackupSettings(), everything_zero)
    with pytest.raises(InvalidSetting, match="would delete every snapshot of files"):
        check_retention(document)
    check_retention(with_changes(document, {"retention.files.keep_last": 1}))


def test_values_set_by_another_version_that_this_one_does_not_take_are_passed_over():
    document = from_values(
        {
            "schedules.database.cron": "30 * * * *",
            "schedules.gone.cron": "0 0 * * *",
            "retention.files.keep_daily": -3,
            "timezone": "Europe/Madrid",
        }
    )
    assert document.schedules["database"].cron == "30 * * * *"
    assert "gone" not in document.schedules
    assert document.retention["files"].keep_daily == BackupSettings().retention["files"].keep_daily
    assert document.timezone == "Europe/Madrid"
