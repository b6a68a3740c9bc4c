"""Which command lines give the images folder a head start (see api/entry.py)."""

from __future__ import annotations

import pytest

from capsule.api.entry import DEFAULT_UPLOADS, folder_to_look_at


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "--kind", "files"], "/srv/uploads"),
        (["--log-level", "warning", "backup", "--kind=all", "--json"], "/srv/uploads"),
        (["backup"], None),
        (["backup", "--kind", "database"], None),
        (["restore", "latest-files", "--to", "x"], None),
        (["snapshots"], None),
        (["backup", "--kind"], None),
    ],
)
def test_only_a_backup_of_the_images_looks_at_the_folder(argv: list[str], expected: str | None) -> None:
    assert folder_to_look_at(argv, {"CAPSULE_UPLOADS": "/srv/uploads"}) == expected


def test_without_the_setting_the_default_folder_is_used() -> None:
    assert folder_to_look_at(["backup", "--kind", "all"], {}) == DEFAULT_UPLOADS
