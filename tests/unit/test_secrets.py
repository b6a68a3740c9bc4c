"""The secrets box: sealed text opens only with its key and for its purpose, and the key is private."""

from __future__ import annotations

import stat

import pytest

from capsule.domain.settings import BackupSettings, masked, shown_value, with_changes
from capsule.orchestrator.secrets import SecretBox, SecretUnavailable, box_in, is_sealed

PASSWORD = "correct horse battery staple"


def test_a_sealed_secret_opens_for_its_purpose_and_holds_no_plaintext(tmp_path):
    box = box_in(tmp_path / "home")
    sealed = box.seal("alerts.smtp.password", PASSWORD)

    assert is_sealed(sealed) and PASSWORD not in sealed and "staple" not in sealed
    assert box.seal("alerts.smtp.password", PASSWORD) != sealed  # a new nonce each time
    assert box_in(tmp_path / "home").open("alerts.smtp.password", sealed) == PASSWORD


def test_the_key_file_is_created_once_readable_only_by_its_owner(tmp_path):
    box = box_in(tmp_path / "home")
    box.seal("k", "v")
    key = (tmp_path / "home" / "secrets.key").read_text()

    assert stat.S_IMODE((tmp_path / "home" / "secrets.key").stat().st_mode) == 0o600
    box_in(tmp_path / "home").seal("k", "v")
    assert (tmp_path / "home" / "secrets.key").read_text() == key


def test_a_secret_moved_to_another_setting_does_not_open(tmp_path):
    box = box_in(tmp_path)
    sealed = box.seal("alerts.smtp.password", PASSWORD)
    with pytest.raises(SecretUnavailable, match="another secrets key") as caught:
        box.open("destinations.drive.refresh_token", sealed)
    assert PASSWORD not in str(caught.value)


def test_another_key_or_none_is_refused_without_the_secret_in_the_message(tmp_path):
    sealed = box_in(tmp_path / "a").seal("alerts.smtp.password", PASSWORD)
    box_in(tmp_path / "b").seal("x", "y")
    with pytest.raises(SecretUnavailable, match="another secrets key"):
        box_in(tmp_path / "b").open("alerts.smtp.password", sealed)
    with pytest.raises(SecretUnavailable, match="is missing"):
        SecretBox(tmp_path / "none" / "secrets.key").open("alerts.smtp.password", sealed)
    with pytest.raises(SecretUnavailable, match="not stored sealed"):
        box_in(tmp_path / "a").open("alerts.smtp.password", PASSWORD)


def test_a_secret_is_shown_masked_and_nothing_as_nothing():
    assert shown_value("alerts.smtp.password", "sealed:v1:abc") == "********"
    assert shown_value("alerts.smtp.password", None) is None
    assert shown_value("alerts.smtp.host", "mail.example.com") == "mail.example.com"
    document = with_changes(BackupSettings(), {"alerts.smtp.password": "sealed:v1:abc"})
    assert masked(document).alerts.smtp.password == "********"
