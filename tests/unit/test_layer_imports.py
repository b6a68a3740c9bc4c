"""Imports point one way: `api` -> `orchestrator` -> `adapters` -> `domain` (docs/architecture.md, 1.2).

`tests/unit/test_domain_imports.py` holds the domain to the standard library and pydantic, and
`tests/unit/test_cli_shape.py` holds the CLI to the use cases; this holds the two layers between:
an adapter never imports the orchestrator or the front door, and the orchestrator never imports
the front door. Every import counts, also one inside a function or under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import capsule.adapters
import capsule.orchestrator

FORBIDDEN = {
    "adapters": ("capsule.orchestrator", "capsule.api"),
    "orchestrator": ("capsule.api",),
}


def imported(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"line {node.lineno}: a relative import; name the module under capsule."
            found.append((node.lineno, node.module))
    return found


def reaching(source: str, layers: tuple[str, ...]) -> list[tuple[int, str]]:
    return [(line, m) for line, m in imported(source) if any(m == x or m.startswith(x + ".") for x in layers)]


def files_of(package: object) -> list[Path]:
    return sorted(Path(getattr(package, "__file__", "") or "").parent.rglob("*.py"))


CASES = [
    (part, path)
    for part, package in (("adapters", capsule.adapters), ("orchestrator", capsule.orchestrator))
    for path in files_of(package)
]


def test_both_layers_have_modules_to_check():
    names = {(part, p.name) for part, p in CASES}
    assert {("adapters", "sealworker.py"), ("orchestrator", "jobrunner.py")} <= names


@pytest.mark.parametrize(("part", "path"), CASES, ids=[f"{part}/{p.name}" for part, p in CASES])
def test_a_layer_imports_no_layer_above_it(part: str, path: Path):
    assert reaching(path.read_text(encoding="utf-8"), FORBIDDEN[part]) == []


def test_the_rule_sees_imports_inside_functions_and_type_checking_blocks():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from capsule.api.render import backed_up\n"
        "def f():\n"
        "    import capsule.orchestrator.steps\n"
        "from capsule.orchestrator_extra import x\n"
        "from capsule.domain.errors import CapsuleError\n"
    )
    assert reaching(source, FORBIDDEN["adapters"]) == [
        (3, "capsule.api.render"),
        (5, "capsule.orchestrator.steps"),
    ]
    assert reaching(source, FORBIDDEN["orchestrator"]) == [(3, "capsule.api.render")]
