"""Every folder of `capsule.adapters` says in its `__init__` docstring what each of its modules is for.

The docstring lists each module (and sub-folder) as "- `name.py`: ..." (or "- `name/`: ..."), so a
module added to a folder without a line there fails here, and so does a line naming a module that
is gone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import capsule.adapters

ROOT = Path(capsule.adapters.__file__ or "").parent
FOLDERS = sorted([ROOT, *(p.parent for p in ROOT.rglob("*/__init__.py"))])
LISTED = re.compile(r"^- `([\w/.]+)`", re.MULTILINE)


def parts_of(folder: Path) -> set[str]:
    modules = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    return modules | {f"{p.parent.name}/" for p in folder.glob("*/__init__.py")}


def listed_in(folder: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
    return {
        name.rpartition("/")[2] if not name.endswith("/") else name.rstrip("/").rpartition("/")[2] + "/"
        for name in LISTED.findall(doc)
    }


def test_the_adapters_have_folders_to_check():
    assert {"sqlite", "files", "repository", "backends", "workers", "sampleshop"} <= {f.name for f in FOLDERS}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.relative_to(ROOT.parent).as_posix())
def test_a_folder_docstring_lists_each_of_its_modules(folder: Path):
    assert listed_in(folder) == parts_of(folder)
