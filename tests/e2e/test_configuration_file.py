"""A mistake in capsule.toml stops every command with exit code 2 and one line that names the
file, the line and what to write instead; it is never a traceback, and never silently ignored."""

from __future__ import annotations

from tests.integration.helpers import Shop, one_line_error


def write_settings(shop: Shop, text: str) -> str:
    (shop.root / "capsule.toml").write_text(text)
    return str((shop.root / "capsule.toml").resolve())


def test_a_syntax_error_names_the_file_line_and_column(shop: Shop) -> None:
    path = write_settings(shop, 'lock_wait_seconds = 5\ndatabase = "data/pos.db\n')

    proc = shop.run("snapshots", expect=2)

    message = one_line_error(proc)
    assert f"{path}, line 2, column " in message
    assert "not valid TOML" in message


def test_a_misspelled_key_is_refused_with_the_nearest_known_one(shop: Shop) -> None:
    path = write_settings(shop, '# the shop\ndatabase = "data/pos.db"\nlock_wait_second = 5\n')

    proc = shop.run("backup", expect=2)

    message = one_line_error(proc)
    assert (
        f"{path}, line 3: `lock_wait_second` is not a setting; did you mean `lock_wait_seconds`?" in message
    )
    write_settings(shop, 'database = "data/pos.db"\n')
    assert shop.snapshots() == []  # the backup never started


def test_an_environment_variable_name_in_the_file_points_to_its_key(shop: Shop) -> None:
    path = write_settings(shop, 'CAPSULE_REPOSITORY = "elsewhere"\n')

    message = one_line_error(shop.run("status", expect=2))

    assert f"{path}, line 1: `CAPSULE_REPOSITORY` is not a setting; did you mean `repository`?" in message


def test_an_invalid_value_in_the_file_names_its_line_not_a_variable(shop: Shop) -> None:
    path = write_settings(shop, 'database = "data/pos.db"\n\nlock_wait_seconds = "soon"\n')

    message = one_line_error(shop.run("snapshots", expect=2))

    assert f"{path}, line 3: the setting `lock_wait_seconds` is invalid" in message
    assert "CAPSULE_LOCK_WAIT_SECONDS" not in message


def test_a_misspelled_variable_is_refused_rather_than_backing_up_the_default_path(shop: Shop) -> None:
    proc = shop.run("backup", env={"CAPSULE_DATABSE": str(shop.database)}, expect=2)

    message = one_line_error(proc)
    assert message == (
        "capsule: CAPSULE_DATABSE is not a setting; did you mean CAPSULE_DATABASE? "
        "(rename the variable and run the command again)"
    )
    assert shop.snapshots() == []
