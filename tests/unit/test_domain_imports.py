"""The domain layer depends on the standard library and pydantic only, never on outer layers."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from capsule import domain

ALLOWED_THIRD_PARTY = {"pydantic"}
FORBIDDEN = {"capsule.adapters", "capsule.orchestrator", "capsule.api", "sqlalchemy", "dramatiq"}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import; relative imports stay inside the package.

    Capsule's own modules count by their part: `capsule.domain`, `capsule.adapters`.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, top_level(alias.name)) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, top_level(node.module)))
    return found


def top_level(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "capsule" else parts[0]


def disallowed_imports(source: str) -> list[tuple[int, str]]:
    return [
        (line, module)
        for line, module in imported_modules(source)
        if module in FORBIDDEN
        or not (
            module == "capsule.domain" or module in sys.stdlib_module_names or module in ALLOWED_THIRD_PARTY
        )
    ]


def domain_files() -> list[Path]:
    return sorted(Path(domain.__file__).parent.rglob("*.py"))


def test_domain_has_modules_to_check():
    names = {p.name for p in domain_files()}
    assert {"manifest.py", "errors.py"} <= names


@pytest.mark.parametrize("path", domain_files(), ids=lambda p: p.name)
def test_domain_module_imports_only_stdlib_pydantic_and_domain(path):
    bad = disallowed_imports(path.read_text(encoding="utf-8"))
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize(
    "source",
    [
        "import capsule.adapters.errors",
        "from capsule.adapters.repository.repo import Repository",
        "from capsule.orchestrator import settings",
        "from capsule import adapters",
        "import capsule.api.cli",
        "import sqlalchemy as sa",
        "from dramatiq import actor",
        "import numpy",
        "def f():\n    import structlog\n",
        "try:\n    import zstandard\nexcept ImportError:\n    pass\n",
    ],
)
def test_import_checker_catches_outer_layers_and_third_party_modules(source):
    assert disallowed_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "import json, hashlib",
        "from pathlib import PurePosixPath",
        "from pydantic import BaseModel",
        "from capsule.domain.errors import UnsafePath",
        "from .errors import UnsafePath",
    ],
)
def test_import_checker_allows_stdlib_pydantic_and_the_domain(source):
    assert disallowed_imports(source) == []
