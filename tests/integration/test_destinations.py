"""Destinations through their use cases, on a real event log and real folders: what is recorded,
what a folder destination's probe does, how the settings' version follows, and that a Drive
destination's sealed secrets open again for its backend."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capsule.domain.destinations import DestinationExists, InvalidDestination, UnknownDestination
from capsule.orchestrator import projections
from capsule.orchestrator.destinations import DRIVE_MODULE, DestinationUnavailable, load, open_destination
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.usecases import destinations as uc
from capsule.orchestrator.usecases.settings import ChangeSetting, change, show
from tests.integration.helpers import Shop, in_process_settings

CLIENT = {
    "installed": {
        "client_id": "1234.apps.googleusercontent.com",
        "client_secret": "GOCSPX-client-secret-for-tests",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
}
TOKEN = "1//refresh-token-for-tests"


def test_a_folder_destination_is_probed_and_left_as_a_repository_layout(shop: Shop, tmp_path: Path) -> None:
    settings = in_process_settings(shop)
    folder = tmp_path / "nas" / "capsule"
    folder.mkdir(parents=True)

    added = uc.add_folder(settings, "nas", folder, actor="person:ana@pos-server")
    result = uc.probe_destination(settings, "nas")

    assert (added.action, added.destination.path, added.destination.added_by) == (
        "added",
        str(folder),
        "person:ana@pos-server",
    )
    assert result.ok, result.message
    assert result.category is None
    assert "probe object" in result.message
    assert {p.name for p in folder.iterdir()} >= {"keys", "data", "index", "snapshots", "locks"}
    assert list((folder / "locks").iterdir()) == []


def test_an_unmounted_folder_is_reported_unavailable_without_being_created(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    mount_point = tmp_path / "usb"
    mount_point.mkdir()
    uc.add_folder(settings, "usb", mount_point / "capsule")

    result = uc.probe_destination(settings, "usb")

    assert not result.ok
    assert result.category == "unavailable"
    assert "does not exist" in result.message and "mounted" in result.message
    assert list(mount_point.iterdir()) == []
    with pytest.raises(DestinationUnavailable, match="findmnt"):
        open_destination(settings, "usb")


def test_a_folder_in_the_repository_or_a_duplicate_or_an_unknown_name_is_refused(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    uc.add_folder(settings, "nas", tmp_path / "nas")

    with pytest.raises(InvalidDestination, match="inside the local repository"):
        uc.add_folder(settings, "copy", shop.repository / "copy")
    with pytest.raises(InvalidDestination, match="inside Capsule's home"):
        uc.add_folder(settings, "copy", shop.home)
    with pytest.raises(InvalidDestination, match="must be absolute"):
        uc.add_folder(settings, "copy", "nas/capsule")
    with pytest.raises(DestinationExists):
        uc.add_folder(settings, "nas", tmp_path / "other")
    with pytest.raises(UnknownDestination, match="the destinations: nas"):
        uc.remove(settings, "usb")
    assert [d.name for d in uc.list_destinations(settings).destinations] == ["nas"]


def test_a_link_into_the_repository_is_refused_for_where_it_leads(shop: Shop, tmp_path: Path) -> None:
    link = tmp_path / "looks-elsewhere"
    link.symlink_to(shop.repository)
    with pytest.raises(InvalidDestination, match="inside the local repository"):
        uc.add_folder(in_process_settings(shop), "copy", link / "inner")


def test_destination_changes_move_the_settings_version_and_replay_keeps_it(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    uc.add_folder(settings, "nas", tmp_path / "nas")
    uc.set_enabled(settings, "nas", False)
    unchanged = uc.set_enabled(settings, "nas", False)

    assert unchanged.action == "unchanged"
    assert show(settings).version == 2
    change(settings, ChangeSetting("timezone", "Europe/Madrid", expected_version=2))
    runtime = Runtime(settings)
    try:
        before = projections.settings_row(runtime.engine)
        projections.replay(runtime.engine, runtime.store)
        after = projections.settings_row(runtime.engine)
    finally:
        runtime.close()
    assert before is not None and after is not None
    assert after["version"] == before["version"] == 3
    assert after["changed_values"] == before["changed_values"]
    assert not load(settings).get("nas").enabled


def test_a_drive_destination_records_sealed_secrets_that_open_for_its_backend(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = in_process_settings(shop)
    added = uc.add_gdrive(settings, "drive", CLIENT, TOKEN + "\n", actor="person:ana@pos-server")
    opened: list[Any] = []

    @dataclass(frozen=True)
    class DriveCredentials:
        client_id: str
        client_secret: str
        refresh_token: str
        token_uri: str

    def open_drive(
        folder_name: str, credentials: DriveCredentials, *, consent_hint: str = "", **options: object
    ) -> object:
        assert consent_hint == "capsule destinations renew drive"
        opened.append((folder_name, credentials))
        return object()

    module = types.ModuleType(DRIVE_MODULE)
    module.DriveCredentials = DriveCredentials  # type: ignore[attr-defined]
    module.open_drive = open_drive  # type: ignore[attr-defined]
    module.Backoff = dict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, DRIVE_MODULE, module)
    open_destination(settings, "drive")

    view = added.destination
    assert (view.client_secret, view.refresh_token) == ("********", "********")
    assert opened == [
        (
            "capsule-drive",
            DriveCredentials(
                "1234.apps.googleusercontent.com",
                "GOCSPX-client-secret-for-tests",
                TOKEN,
                "https://oauth2.googleapis.com/token",
            ),
        )
    ]
    stored = load(settings).get("drive")
    assert stored.refresh_token is not None and stored.refresh_token.startswith("sealed:v1:")
    assert TOKEN not in stored.model_dump_json()


def test_a_renewed_consent_hands_the_backend_the_new_token(shop: Shop) -> None:
    from capsule.orchestrator.destinations import open_secrets

    settings = in_process_settings(shop)
    uc.add_gdrive(settings, "drive", CLIENT, TOKEN)
    renewed = uc.renew_consent(settings, "drive", "1//the-new-token")

    assert renewed.action == "consent_renewed"
    assert open_secrets(settings, load(settings).get("drive")) == (
        "GOCSPX-client-secret-for-tests",
        "1//the-new-token",
    )


def test_a_drive_destination_without_its_backend_is_unavailable(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = in_process_settings(shop)
    uc.add_gdrive(settings, "drive", CLIENT, TOKEN)
    monkeypatch.setitem(sys.modules, DRIVE_MODULE, None)  # an import of it fails, as when it is missing

    result = uc.probe_destination(settings, "drive")

    assert (result.ok, result.category) == (False, "unavailable")
    assert "cannot reach Google Drive" in result.message


def test_destinations_added_at_once_are_all_kept(shop: Shop, tmp_path: Path) -> None:
    # Each append is made at the version read; one that meets another made meanwhile is decided
    # again on the new state instead of failing or overwriting.
    from concurrent.futures import ThreadPoolExecutor

    settings = in_process_settings(shop)
    names = [f"nas-{i}" for i in range(4)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda name: uc.add_folder(settings, name, tmp_path / name), names))

    listed = uc.list_destinations(settings)
    assert sorted(d.name for d in listed.destinations) == names
    assert listed.version == len(names)
