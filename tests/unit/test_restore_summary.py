"""The line a files restore ends with counts in words a reader would use: `1 file`, not `1 files`
(the restore of one image is the one a shop runs most)."""

from __future__ import annotations

import pytest

from capsule.api.render import restored
from capsule.orchestrator.usecases.restore import Restored


def summary(capsys: pytest.CaptureFixture[str], **counts: int) -> str:
    result = Restored(
        job_id="20261207120000-0badf00d",
        snapshot_id="c2" * 32,
        in_place=False,
        kind="files",
        target="/srv/shop/one-image",
        bytes=232_755,
        **{"files": 1, "dirs": 0, "symlinks": 0, **counts},
    )
    restored(result)
    return capsys.readouterr().out


def test_one_of_each_is_singular(capsys: pytest.CaptureFixture[str]) -> None:
    said = summary(capsys, files=1, dirs=1, symlinks=1, already_there=1, special_bits_cleared=1)
    assert said.startswith("Restored 1 file (227.3 KiB), 1 folder and 1 link of snapshot c2c2c2c2c2c2 "), said
    assert "; 1 was already there and left as it was.\n" in said
    assert "The setuid or setgid bit of 1 file or folder was not restored" in said


def test_none_or_many_are_plural(capsys: pytest.CaptureFixture[str]) -> None:
    said = summary(capsys, files=262, dirs=0, symlinks=2, already_there=262, special_bits_cleared=2)
    assert said.startswith("Restored 262 files (227.3 KiB), 0 folders and 2 links of snapshot "), said
    assert "; 262 were already there and left as they were.\n" in said
    assert "The setuid or setgid bit of 2 files or folders was not restored" in said
