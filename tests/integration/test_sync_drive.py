"""`capsule sync` to a Google Drive destination and `--from` it: the destination factory, the real
Drive backend and Google's client against the fake Drive (tests/fakes/drive.py), reached through
CAPSULE_GDRIVE_ROOT_URL as a proxy would be."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule.adapters.repository.backends.gdrive import DriveCredentials
from capsule.domain.errors import Category
from capsule.orchestrator.destinations import load
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.destinations import add_folder, add_gdrive
from capsule.orchestrator.usecases.snapshots import list_snapshots
from capsule.orchestrator.usecases.sync import Sync, sync
from capsule.orchestrator.usecases.verify import Verify, verify_repository
from tests.fakes.drive import FakeDrive
from tests.integration.helpers import Shop, in_process_settings


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


def drive_destination(fake: FakeDrive, monkeypatch: pytest.MonkeyPatch, shop: Shop) -> DriveCredentials:
    """Add destination `drive`, consented on the fake, and point Google's client at the fake."""
    credentials = fake.credentials()
    add_gdrive(in_process_settings(shop), "drive", fake.client_config(), credentials.refresh_token)
    monkeypatch.setenv("CAPSULE_GDRIVE_ROOT_URL", fake.url)
    return credentials


@pytest.mark.slow
def test_a_repository_synced_to_drive_is_listed_and_verified_from_it_and_a_second_sync_sends_nothing(
    shop: Shop, fake: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = in_process_settings(shop)
    back_up(settings, Backup(kind="database"))
    drive_destination(fake, monkeypatch, shop)

    [first] = sync(settings, Sync("drive")).destinations
    uploads = fake.count("POST", "/upload/")
    [second] = sync(settings, Sync()).destinations

    assert first.ok, first.error
    assert first.sent > 0 and first.sent_by_kind["snapshots"] == 1
    assert (second.ok, second.sent, second.sent_bytes, second.skipped) == (True, 0, 0, first.sent)
    assert fake.count("POST", "/upload/") == uploads  # nothing was uploaded by the second run
    local = list_snapshots(settings)
    assert [sid for sid, _ in list_snapshots(settings, source="drive").snapshots] == [
        sid for sid, _ in local.snapshots
    ]
    report = verify_repository(settings, Verify(read_data=True, source="drive"))
    assert report.ok and report.snapshots == 1


def test_a_drive_destination_whose_consent_was_revoked_is_reported_and_the_folder_still_gets_its_copy(
    shop: Shop, fake: FakeDrive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    credentials = drive_destination(fake, monkeypatch, shop)
    folder = tmp_path / "nas"
    folder.mkdir()
    add_folder(settings, "nas", folder)
    fake.revoke(credentials.refresh_token)

    result = {d.name: d for d in sync(settings, Sync()).destinations}

    assert (result["drive"].ok, result["drive"].category) == (False, Category.REFUSED)
    assert "consent" in (result["drive"].error or "")
    assert result["nas"].ok and result["nas"].sent > 0
    assert load(settings).get("drive").needs_consent is not None  # status --check now says so


def _searches(fake: FakeDrive, since: int) -> list[str]:
    """The `q` of every search (files.list) the fake answered since request number `since`."""
    asked = fake.requests[since:]
    return [r.query.get("q", "") for r in asked if (r.method, r.path) == ("GET", "/drive/v3/files")]


@pytest.mark.slow
def test_a_sync_lists_the_drive_folder_once_for_every_kind(
    shop: Shop, fake: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = in_process_settings(shop)
    back_up(settings, Backup(kind="database"))
    drive_destination(fake, monkeypatch, shop)
    [first] = sync(settings, Sync("drive")).destinations
    first_searches = _searches(fake, 0)
    back_up(settings, Backup(kind="database"))
    asked = len(fake.requests)

    [second] = sync(settings, Sync("drive")).destinations

    searches = _searches(fake, asked)
    assert first.ok and second.ok, (first.error, second.error)
    folder_lookups = [q for q in searches if "mimeType" in q]
    listings = [q for q in searches if "mimeType" not in q]
    assert len(folder_lookups) == 1, searches
    assert len(listings) <= 1, searches  # one listing serves config, keys, packs, indexes, snapshots, logs
    assert len([q for q in first_searches if "mimeType" not in q]) <= 1, first_searches
    assert (second.sent, second.deleted) == (0, 0)  # the backup's own upload step sent its snapshot
    assert second.skipped > first.sent
    assert second.event_log_written and second.event_log != first.event_log
    assert [sid for sid, _ in list_snapshots(settings, source="drive").snapshots] == [
        sid for sid, _ in list_snapshots(settings).snapshots
    ]
    report = verify_repository(settings, Verify(read_data=True, source="drive"))
    assert report.ok and report.snapshots == 2
