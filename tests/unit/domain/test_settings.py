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
    assert {"schedules.database.cron", "schedules.files.enabled", "retention.files.keep-daily"} <= set(names)
    assert {"alerts.email", "alerts.webhook"} <= set(names)
    for key in names:
        value_of(BackupSettings(), key)


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("schedules.files.enabled", "off", False),
        ("schedules.files.enabled", "Yes", True),
        ("retention.database.keep-daily", "14", 14),
        ("retention.database.keep_daily", "14", 14),
        ("retention.files.keep-within", "2Y5m", "2y5m"),
        ("retention.files.keep-within", "none", None),
        ("retention.files.keep-tag", "audit, year-end", ["audit", "year-end"]),
        ("retention.auto", "off", False),
        ("retention.repack_unused_percent", "25", 25),
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
            "retention.database.keep-daily: `7.5` is not a whole number",
        ),
        ("retention.files.keep-within", "a week", "retention.files.keep-within: `a week` is not a duration"),
        ("schedules.databse.cron", "0 * * * *", "did you mean `schedules.database.cron`?"),
        ("nothing.like.it", "1", "`capsule settings show` lists every key"),
    ],
)
def test_a_wrong_value_or_key_names_the_key_and_what_to_do(key, text, message):
    with pytest.raises(InvalidSetting) as caught:
        parse(BackupSettings(), key, text)
    assert message in str(caught.value)


def test_a_value_out_of_its_range_is_refused_by_the_document():
    with pytest.raises(InvalidSetting, match=r"retention\.database\.keep-daily: -1 is negative"):
        check_retention(with_changes(BackupSettings(), {"retention.database.keep_daily": -1}))
    with pytest.raises(InvalidSetting, match=r"retention\.repack-unused-percent: input should be less"):
        with_changes(BackupSettings(), {"retention.repack-unused-percent": 101})
    with pytest.raises(InvalidSetting, match=r"schedules\.files\.jitter_seconds"):
        with_changes(BackupSettings(), {"schedules.files.jitter_seconds": 7200})


def test_a_retention_policy_that_keeps_nothing_is_refused():
    everything_zero = {f"retention.files.{k}": 0 for k in ("keep-last", "keep-hourly", "keep-daily")}
    everything_zero |= {f"retention.files.{k}": 0 for k in ("keep-weekly", "keep-monthly", "keep-yearly")}
    document = with_changes(BackupSettings(), everything_zero)
    with pytest.raises(InvalidSetting, match=r"retention\.files: every keep-\* count is 0.*forget every"):
        check_retention(document)
    check_retention(with_changes(document, {"retention.files.keep-last": 1}))
    check_retention(with_changes(document, {"retention.files.keep-within": "7d"}))


def test_the_default_policies_suit_the_default_schedules():
    for kind in ("database", "files"):
        rules = BackupSettings().retention.policy(kind)
        assert (rules.keep_last, rules.keep_hourly, rules.keep_daily) == (3, 48, 14)
        assert (rules.keep_weekly, rules.keep_monthly, rules.keep_yearly) == (8, 12, 3)
        assert rules.keep_within is None and rules.keep_tag == ()
    assert BackupSettings().retention.auto is True
    assert BackupSettings().retention.repack_unused_percent == 10
    check_retention(BackupSettings())


def test_underscored_retention_keys_of_earlier_versions_replay_to_the_same_values():
    # What earlier versions recorded, in the order they recorded it, then a change spelled today.
    document = from_values(
        {
            "retention.database.keep_daily": 30,
            "retention.files.keep_last": 5,
            "retention.database.keep-hourly": 12,
        }
    )
    assert document.retention.database.keep_daily == 30
    assert document.retention.files.keep_last == 5
    assert document.retention.database.keep_hourly == 12
    assert value_of(document, "retention.database.keep_daily") == 30
    later = from_values({"retention.database.keep_daily": 30, "retention.database.keep-daily": 20})
    assert later.retention.database.keep_daily == 20


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
    assert document.retention.files.keep_daily == -3  # kept as set; check_retention refuses it when applied
    assert document.timezone == "Europe/Madrid"
