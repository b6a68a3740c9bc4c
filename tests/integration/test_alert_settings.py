"""The alert settings refuse a target that cannot be one, naming the key, and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule.domain.settings import InvalidSetting
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.settings import ChangeSetting, change, show


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        (
            "alerts.webhook",
            "hooks.example.com/x",
            "alerts.webhook: `hooks.example.com/x` is not an http:// or https://",
        ),
        (
            "alerts.webhook",
            "ftp://example.com/x",
            "alerts.webhook: `ftp://example.com/x` is not an http:// or https://",
        ),
        ("alerts.email", "owner, ana@shop.example", "alerts.email: `owner` is not an e-mail address"),
        ("alerts.smtp.port", "70000", "alerts.smtp.port: input should be less than or equal to 65535"),
        ("alerts.smtp.starttls", "maybe", "alerts.smtp.starttls: `maybe` is not true or false"),
    ],
)
def test_a_target_that_cannot_be_one_is_refused_with_its_key(settings: Settings, key, value, said) -> None:
    with pytest.raises(InvalidSetting) as refused:
        change(settings, ChangeSetting(key, value))
    assert str(refused.value).startswith(said)
    assert show(settings).version == 0


def test_targets_are_kept_as_lists_and_a_password_can_be_removed(settings: Settings) -> None:
    change(settings, ChangeSetting("alerts.email", "owner@shop.example, ana@shop.example"))
    change(settings, ChangeSetting("alerts.webhook", "https://hooks.example.com/services/T0/B0/x"))
    set_it = change(settings, ChangeSetting("alerts.smtp.password", "hunter2"))
    removed = change(settings, ChangeSetting("alerts.smtp.password", ""))

    alerts = show(settings).document.alerts
    assert alerts.email == ("owner@shop.example", "ana@shop.example")
    assert alerts.webhook == ("https://hooks.example.com/services/T0/B0/x",)
    assert (set_it.old, set_it.new, removed.old, removed.new) == (None, "********", "********", None)
    assert alerts.smtp.password is None
