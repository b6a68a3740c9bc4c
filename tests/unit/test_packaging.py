"""The wheel's package list names every folder of Capsule's, each under `capsule`.

setuptools maps the top-level folders under `capsule` (pyproject.toml, `[tool.setuptools]`); a
folder missing from the list would be missing from the installed program.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("domain", "orchestrator", "adapters", "api")


def pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_in_the_wheels_list():
    folders = {
        "capsule." + ".".join(init.parent.relative_to(ROOT).parts)
        for part in PARTS
        for init in (ROOT / part).rglob("__init__.py")
    }
    assert set(pyproject()["tool"]["setuptools"]["packages"]) == folders


def test_each_part_is_mapped_from_its_folder():
    assert pyproject()["tool"]["setuptools"]["package-dir"] == {f"capsule.{p}": p for p in PARTS}


def test_mypy_checks_the_parts_by_their_installed_names():
    assert pyproject()["tool"]["mypy"]["packages"] == [f"capsule.{p}" for p in PARTS]
