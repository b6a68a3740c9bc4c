"""Settings: CAPSULE_* environment variables over capsule.toml in the working folder over defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from capsule.orchestrator.settings import Settings, SettingsInvalid, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No CAPSULE_* variable from the outside, and a working folder with no capsule.toml."""
    for name in list(os.environ):
        if name.upper().startswith("CAPSULE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_relative_to_the_working_folder():
    s = Settings()
    assert s.database == Path("data/pos.db")
    assert s.repository == Path("data/backups")
    assert s.home == Path("data/capsule")
    assert not s.database.is_absolute()
    assert s.resolved_key_file == Path("data/capsule/repository.key")
    assert s.staging == Path("data/capsule/staging")
    assert s.passphrase is None
    assert s.pack_size == 32 * 1024 * 1024


def test_environment_variables_override_defaults(monkeypatch):
    monkeypatch.setenv("CAPSULE_DATABASE", "/srv/pos/shop.db")
    monkeypatch.setenv("CAPSULE_REPOSITORY", "/mnt/nas/backups")
    monkeypatch.setenv("CAPSULE_HOME", "state")
    monkeypatch.setenv("CAPSULE_PACK_SIZE", str(4 * 1024 * 1024))
    monkeypatch.setenv("CAPSULE_LOG_LEVEL", "debug")
    s = Settings()
    assert s.database == Path("/srv/pos/shop.db")
    assert s.repository == Path("/mnt/nas/backups")
    assert s.resolved_key_file == Path("state/repository.key")
    assert s.pack_size == 4 * 1024 * 1024
    assert s.log_level == "debug"


def test_key_file_variable_overrides_the_default_under_home(monkeypatch):
    monkeypatch.setenv("CAPSULE_KEY_FILE", "/media/usb/shop.key")
    assert Settings().resolved_key_file == Path("/media/usb/shop.key")


def test_event_log_key_file_lives_under_home_unless_its_variable_says(monkeypatch):
    monkeypatch.setenv("CAPSULE_HOME", "state")
    assert Settings().resolved_event_log_key_file == Path("state/event-log.key")
    monkeypatch.setenv("CAPSULE_EVENT_LOG_KEY_FILE", "/etc/capsule/event-log.key")
    assert Settings().resolved_event_log_key_file == Path("/etc/capsule/event-log.key")


def test_capsule_toml_in_the_working_folder_is_read(tmp_path):
    (tmp_path / "capsule.toml").write_text(
        'database = "shop/pos.db"\nrepository = "/mnt/nas/capsule"\npack_size = 2097152\n'
        "lock_wait_seconds = 5\n"
    )
    s = Settings()
    assert s.database == Path("shop/pos.db")
    assert s.repository == Path("/mnt/nas/capsule")
    assert s.pack_size == 2 * 1024 * 1024
    assert s.lock_wait_seconds == 5
    assert s.home == Path("data/capsule")  # not in the file: default


def test_environment_wins_over_capsule_toml(tmp_path, monkeypatch):
    (tmp_path / "capsule.toml").write_text('database = "from-file.db"\nhome = "file-home"\n')
    monkeypatch.setenv("CAPSULE_DATABASE", "from-env.db")
    s = Settings()
    assert s.database == Path("from-env.db")
    assert s.home == Path("file-home")


def test_capsule_toml_of_another_folder_is_not_read(tmp_path, monkeypatch):
    (tmp_path / "capsule.toml").write_text('database = "elsewhere.db"\n')
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert Settings().database == Path("data/pos.db")


def test_passphrase_from_the_environment_stays_hidden(monkeypatch):
    monkeypatch.setenv("CAPSULE_PASSPHRASE", "hunter2-correct-horse")
    s = Settings()
    assert s.passphrase is not None
    assert s.passphrase.get_secret_value() == "hunter2-correct-horse"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAPSULE_PACK_SIZE", "1000"),
        ("CAPSULE_PACK_SIZE", str(2 * 1024 * 1024 * 1024)),
        ("CAPSULE_LOG_LEVEL", "chatty"),
        ("CAPSULE_LOCK_WAIT_SECONDS", "-1"),
    ],
)
def test_invalid_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_an_unknown_key_in_capsule_toml_is_refused_with_its_line(tmp_path):
    (tmp_path / "capsule.toml").write_text('database = "x.db"\n\n[colour]\nshade = "blue"\n')
    with pytest.raises(
        SettingsInvalid, match=r"capsule.toml, line 3: `colour` is not a setting; the settings are"
    ):
        Settings()


@pytest.mark.parametrize(
    ("key", "nearest"),
    [("lock_wait", "lock_wait_seconds"), ("CAPSULE_HOME", "home"), ("safety-copies", "safety_copies")],
)
def test_a_misspelled_key_in_capsule_toml_names_the_nearest_setting(tmp_path, key, nearest):
    (tmp_path / "capsule.toml").write_text(f"{key} = 1\n")
    with pytest.raises(SettingsInvalid, match=f"did you mean `{nearest}`"):
        Settings()


def test_an_invalid_value_from_the_environment_names_the_variable(monkeypatch, tmp_path):
    (tmp_path / "capsule.toml").write_text("pack_size = 5\n")
    monkeypatch.setenv("CAPSULE_PACK_SIZE", "7")
    with pytest.raises(SettingsInvalid, match=r"^the setting CAPSULE_PACK_SIZE is invalid"):
        load_settings()
    monkeypatch.delenv("CAPSULE_PACK_SIZE")
    with pytest.raises(SettingsInvalid, match=r"capsule.toml, line 1: the setting `pack_size` is invalid"):
        load_settings()


def test_three_safety_copies_are_kept_by_default_and_never_none(monkeypatch):
    assert Settings().safety_copies == 3
    monkeypatch.setenv("CAPSULE_SAFETY_COPIES", "0")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("CAPSULE_DATABSE", "CAPSULE_DATABASE"),
        ("CAPSULE_UPLOAD", "CAPSULE_UPLOADS"),
        ("CAPSULE_KEYFILE", "CAPSULE_KEY_FILE"),
    ],
)
def test_a_misspelled_variable_is_refused_with_the_setting_it_resembles(monkeypatch, name, meant):
    monkeypatch.setenv(name, "somewhere")
    with pytest.raises(SettingsInvalid, match=f"^{name} is not a setting; did you mean {meant}\\?"):
        load_settings()


def test_other_capsule_variables_are_left_alone(monkeypatch):
    for name in ("CAPSULE_FAULTS", "CAPSULE_TEST_POSTGRES_URL", "CAPSULE_HOST", "CAPSULE_LOG_FILE"):
        monkeypatch.setenv(name, "x")
    assert load_settings().database == Path("data/pos.db")


def test_a_variable_is_read_whatever_the_case_of_its_name(monkeypatch):
    monkeypatch.setenv("capsule_pack_size", str(2 * 1024 * 1024))
    monkeypatch.setenv("Capsule_Home", "state")
    s = load_settings()
    assert s.pack_size == 2 * 1024 * 1024
    assert s.home == Path("state")


def test_values_given_win_over_the_environment_and_capsule_toml(tmp_path, monkeypatch):
    (tmp_path / "capsule.toml").write_text('home = "file-home"\nrepository = "file-repo"\n')
    monkeypatch.setenv("CAPSULE_HOME", "env-home")
    s = Settings(home=Path("given-home"))
    assert s.home == Path("given-home")
    assert s.repository == Path("file-repo")


def test_a_folder_named_capsule_toml_is_no_settings_file(tmp_path):
    (tmp_path / "capsule.toml").mkdir()
    assert Settings().database == Path("data/pos.db")
