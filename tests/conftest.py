"""Fixtures for the integration and end-to-end tests: generated shop databases, a shop per test."""

from __future__ import annotations

import compileall
import os
from pathlib import Path

import pytest

import capsule
from tests.integration.helpers import DatabaseTemplates, Shop, copy_shop


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one test process more than cores. Most tests wait on the `capsule` processes they
    start, on leases and on servers, so one more process keeps both cores busy through those waits.
    Two more kept no more of the cores busy (about 1.5 of 2) and took longer."""
    return (os.cpu_count() or 1) + 1


def pytest_configure(config: pytest.Config) -> None:
    """Compile Capsule's modules once, before any test starts a `capsule` process.

    An editable install leaves them uncompiled, and where PYTHONDONTWRITEBYTECODE is set no process
    writes what it compiled: each of the suite's several hundred `capsule` processes would compile
    every module it imports again (about 0.1 s each). Compiled files are still read when that
    variable is set, and Python checks each against its source.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        for folder in capsule.__path__:
            compileall.compile_dir(folder, quiet=2, workers=0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first, each group in its own order: handed out last, one long test
    would keep the run going on one process while the others have nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder shared by every test process of this run (each has a temporary folder of its own
    beneath the run's): for what is slow to make and made once, with `made_once`."""
    own = tmp_path_factory.getbasetemp()
    return own if worker_id == "master" else own.parent


@pytest.fixture(scope="session")
def templates(shared_folder: Path) -> DatabaseTemplates:
    return DatabaseTemplates(shared_folder / "pos-templates")


@pytest.fixture
def bare_shop(tmp_path: Path, templates: DatabaseTemplates) -> Shop:
    """A shop with a 4 MiB WAL database and no repository yet."""
    shop = Shop(tmp_path / "shop")
    templates.copy(shop.database)
    return shop


@pytest.fixture(scope="session")
def initialised_template(tmp_path_factory: pytest.TempPathFactory, templates: DatabaseTemplates) -> Shop:
    shop = Shop(tmp_path_factory.mktemp("initialised") / "shop")
    templates.copy(shop.database)
    shop.init()
    return shop


@pytest.fixture
def shop(tmp_path: Path, initialised_template: Shop) -> Shop:
    """A shop with a 4 MiB WAL database and an empty repository with its key file."""
    return copy_shop(initialised_template, tmp_path / "shop")
