"""The pack size: 32 MiB for a new repository, and the one its config records for an existing one.

Packs of 32 MiB keep a copy to Google Drive under 80 requests per GiB (two requests a pack); a
repository made with 16 MiB packs keeps writing 16 MiB packs, whatever the setting says now.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.repo import DEFAULT_PACK_SIZE, Repository
from capsule.domain.sizes import DEFAULT_PACK_SIZE as DOMAIN_DEFAULT
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import init_repository, open_repository

MiB = 1024 * 1024


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)  # no capsule.toml of the machine's
    for name in list(os.environ):
        if name.upper().startswith("CAPSULE_"):
            monkeypatch.delenv(name)
    return Settings(repository=tmp_path / "repo", home=tmp_path / "home")


def _recorded(repository: Path) -> int:
    return int(json.loads((repository / "config").read_text())["pack_size"])


def test_repository_and_settings_share_one_default_of_32_mib():
    assert DEFAULT_PACK_SIZE == DOMAIN_DEFAULT == 32 * MiB
    assert Settings.model_fields["pack_size"].default == 32 * MiB


def test_a_repository_made_with_defaults_records_32_mib_in_its_config(settings: Settings):
    repo = init_repository(settings)
    assert repo.pack_size == 32 * MiB
    assert _recorded(settings.repository) == 32 * MiB
    assert open_repository(settings).pack_size == 32 * MiB


def test_a_repository_made_with_16_mib_packs_keeps_them_under_the_new_default(
    settings: Settings, tmp_path: Path
):
    Repository.init(LocalBackend(settings.repository), settings.resolved_key_file, pack_size=16 * MiB)
    assert settings.pack_size == 32 * MiB

    repo = open_repository(settings)
    assert repo.pack_size == 16 * MiB
    # 20 blobs of 1 MiB that do not compress: a 16 MiB pack closes after 16 of them, where the
    # default would have taken all 20 into one pack.
    for _ in range(20):
        assert repo.add(repo.prepare(0, os.urandom(MiB)))
    repo.flush()
    sizes = sorted(p.stat().st_size for p in (settings.repository / "data").rglob("*") if p.is_file())
    assert len(sizes) == 2
    assert 16 * MiB <= sizes[1] < 17 * MiB
    assert 4 * MiB <= sizes[0] < 5 * MiB
    assert _recorded(settings.repository) == 16 * MiB


def test_a_pack_size_set_before_init_is_recorded_instead_of_the_default(tmp_path: Path, settings: Settings):
    init_repository(settings.model_copy(update={"pack_size": 16 * MiB}))
    assert _recorded(settings.repository) == 16 * MiB
