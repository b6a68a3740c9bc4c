"""`capsule sync` through its use case and its copy engine: a real repository on disk copied to
folder destinations and to memory, the order of the writes, a second run, damage and failures."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from capsule.adapters.repository.backends import Backend, Kind, open_backend
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.adapters.repository.copy import ORDER, CopyRefused, copy_repository
from capsule.domain.errors import Category
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.destinations import add_folder, set_enabled
from capsule.orchestrator.usecases.sync import NoDestination, Sync, sync
from tests.integration.helpers import Shop, in_process_settings


class Recording(MemoryBackend):
    """A memory store that remembers the kind of every write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Kind] = []

    def write(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        self.writes.append(kind)
        super().write(kind, name, data)


@pytest.fixture
def backed_up(shop: Shop) -> Iterator[Shop]:
    back_up(in_process_settings(shop), Backup(kind="database"))
    yield shop


def objects(backend: Backend) -> dict[tuple[str, str], str]:
    found = {("config", "config"): hashlib.sha256(backend.read("config", "config")).hexdigest()}
    for kind in ("keys", "data", "index", "snapshots"):
        for name in backend.list(kind):  # type: ignore[arg-type]
            found[(kind, name)] = hashlib.sha256(backend.read(kind, name)).hexdigest()  # type: ignore[arg-type]
    return found


def test_copy_writes_config_and_keys_then_packs_then_index_then_snapshots_and_a_second_run_sends_nothing(
    backed_up: Shop,
) -> None:
    local = open_backend(backed_up.repository)
    local.write("locks", "a" * 64, b"{}")
    copy = Recording()

    first = copy_repository(local, copy)
    second = copy_repository(local, copy)

    assert copy.writes == sorted(copy.writes, key=ORDER.index)
    assert set(copy.writes) == set(ORDER)
    assert objects(copy) == objects(local)
    assert list(copy.list("locks")) == []
    assert first.sent == len(objects(local)) and first.skipped == 0
    assert first.sent_bytes == sum(len(local.read(k, n)) for k, n in objects(local))  # type: ignore[arg-type]
    assert (second.sent, second.sent_bytes, second.skipped) == (0, 0, first.sent)


def test_a_pack_damaged_on_the_local_disk_is_not_copied(backed_up: Shop) -> None:
    local = open_backend(backed_up.repository)
    pack = next(iter(local.list("data")))
    damaged = bytearray(local.read("data", pack))
    damaged[100] ^= 1
    local.write("data", pack, bytes(damaged))
    copy = MemoryBackend()

    with pytest.raises(CopyRefused, match=f"data object {pack[:12]} .* does not match its name"):
        copy_repository(local, copy)

    assert pack not in set(copy.list("data"))
    assert list(copy.list("snapshots")) == []


def test_sync_copies_to_every_enabled_destination_and_reports_the_unmounted_one(
    backed_up: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(backed_up)
    nas, usb, off = tmp_path / "nas", tmp_path / "usb" / "capsule", tmp_path / "off"
    nas.mkdir()
    off.mkdir()
    add_folder(settings, "nas", nas)
    add_folder(settings, "usb", usb)  # never mounted
    add_folder(settings, "off", off)
    set_enabled(settings, "off", enabled=False)

    first = sync(settings, Sync())
    second = sync(settings, Sync("nas"))

    by_name = {d.name: d for d in first.destinations}
    assert set(by_name) == {"nas", "usb"}
    assert by_name["nas"].ok and by_name["nas"].sent > 0 and by_name["nas"].sent_by_kind["snapshots"] == 1
    assert (by_name["usb"].ok, by_name["usb"].category) == (False, Category.UNAVAILABLE)
    assert "check that it is mounted" in (by_name["usb"].error or "")
    assert objects(open_backend(nas)) == objects(open_backend(backed_up.repository))
    assert not any(off.iterdir())
    [again] = second.destinations
    assert (again.sent, again.sent_bytes, again.skipped) == (0, 0, by_name["nas"].sent)


def test_sync_without_a_destination_says_how_to_add_one(backed_up: Shop) -> None:
    with pytest.raises(NoDestination, match="capsule destinations add folder NAME PATH"):
        sync(in_process_settings(backed_up), Sync())
