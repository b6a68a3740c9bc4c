"""What `capsule serve` says as it starts about where the backups are copied."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capsule.api.render_serve import started
from capsule.orchestrator.usecases.serve import PlannedSchedule, ServicePlan


def plan(offsite: list[str]) -> ServicePlan:
    due = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    return ServicePlan(
        url=None,
        worker="embedded",
        timezone="UTC",
        schedules=[PlannedSchedule("database", "0 * * * *", True, due)],
        first_backups=[],
        grace_seconds=30,
        alert_targets=[],
        offsite=offsite,
    )


def test_the_copies_a_backup_makes_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    started(plan(["usb (folder /mnt/usb/capsule)", "drive (Google Drive folder capsule-drive)"]))
    said = capsys.readouterr().out
    assert "After each backup, copies go to usb (folder /mnt/usb/capsule); " in said
    assert "drive (Google Drive folder capsule-drive)." in said
    assert "No off-site copy" not in said


def test_no_copy_is_said_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    started(plan([]))
    said = capsys.readouterr().out
    assert "No off-site copy: the backups stay on this machine" in said
    assert "capsule destinations add" in said
