"""The alert settings refuse a target that cannot be one, naming the key, and change nothing; a
webhook's address, which often holds its token, is kept sealed like the SMTP password."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule.domain.settings import InvalidSetting, masked
from capsule.orchestrator.alerts import Alerter
from capsule.orchestrator.runtime import Runtime
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
    assert len(alerts.webhook) == 1
    assert (set_it.old, set_it.new, removed.old, removed.new) == (None, "********", "********", None)
    assert alerts.smtp.password is None


def test_a_webhooks_address_is_kept_sealed_and_shown_without_its_path(settings: Settings) -> None:
    url = "https://hooks.example.com/services/T0/B0/s3cr3t-t0k3n"
    changed = change(settings, ChangeSetting("alerts.webhook", url))

    stored = b"".join(p.read_bytes() for p in settings.home.rglob("*") if p.is_file())
    assert b"s3cr3t-t0k3n" not in stored and b"T0/B0" not in stored
    (shown,) = changed.new
    assert shown.startswith("https://hooks.example.com/… (") and "T0" not in shown
    document = show(settings).document
    assert masked(document).alerts.webhook == (shown,)
    runtime = Runtime(settings)
    try:
        (target,) = Alerter.of(runtime).targets(document)
    finally:
        runtime.close()
    assert (target.channel, target.target) == ("webhook", shown)
