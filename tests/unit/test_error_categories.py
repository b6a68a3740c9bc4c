"""Errors say what happened (a category); only `api/` turns a category into an exit code."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from capsule import adapters, api, domain, orchestrator
from capsule.api.exitcodes import EXIT_CODES, exit_code
from capsule.domain.errors import CapsuleError, Category

PACKAGES = (domain, orchestrator, adapters, api)


def every_module_imported() -> None:
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(info.name)


def error_classes() -> list[type[CapsuleError]]:
    every_module_imported()
    found: list[type[CapsuleError]] = []
    todo = [CapsuleError]
    while todo:
        cls = todo.pop()
        if ".".join(cls.__module__.split(".")[:2]) in {p.__name__ for p in PACKAGES}:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


ERRORS = error_classes()


def test_the_errors_of_every_layer_are_found():
    names = {c.__name__ for c in ERRORS}
    assert {"CapsuleError", "RepositoryLocked", "EventLogDamaged", "SourceBusy", "StepRefused"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__qualname__)
def test_every_error_class_declares_its_own_category(cls: type[CapsuleError]):
    assert "category" in vars(cls), f"{cls.__qualname__} inherits its category instead of declaring it"
    assert isinstance(cls.category, Category)


def test_an_error_class_without_a_category_is_refused_when_it_is_defined():
    with pytest.raises(TypeError, match="declare the category"):

        class Vague(CapsuleError):
            """Raised when something went wrong, without saying what."""


def test_every_category_has_an_exit_code():
    assert set(EXIT_CODES.by_category) == set(Category)


# The exit code each error ended a command with when the errors carried it themselves.
DAMAGE, LOCKED = 3, 4
BEFORE = {
    "IntegrityError": DAMAGE,
    "BlobNotFound": DAMAGE,
    "CopyRefused": DAMAGE,  # new with `capsule sync`: a damaged local object is not copied
    "EventLogDamaged": DAMAGE,
    "EventLogTampered": DAMAGE,
    "RepositoryLocked": LOCKED,
    "SourceBusy": LOCKED,
    "SnapshotSetAside": DAMAGE,  # new with `capsule repair`: a snapshot it set aside
}
# Errors that came later, with the code they were given.
SINCE = {
    "InvalidSetting": 2,
    "DrillFoundDamage": 3,
    "CannotListen": 2,
    "NoBroker": 2,
    "StillInUse": 4,
    "InvalidDestination": 2,
    "ProbeMismatch": 3,
    "LogCopyInvalid": 3,  # new with `capsule recover`: a copy of the event log that does not hold together
}


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__qualname__)
def test_every_error_ends_a_command_with_the_exit_code_it_always_had(cls: type[CapsuleError]):
    assert exit_code(cls.category) == {**BEFORE, **SINCE}.get(cls.__name__, 1)


def test_the_cli_keeps_its_own_codes_for_usage_and_interruption():
    assert (EXIT_CODES.ok, EXIT_CODES.usage, EXIT_CODES.interrupted) == (0, 2, 130)
    assert {EXIT_CODES.ok, EXIT_CODES.interrupted}.isdisjoint(EXIT_CODES.by_category.values())
    # A setting an admin gives is the command's usage, as an unknown option is.
    usage = {c for c, code in EXIT_CODES.by_category.items() if code == EXIT_CODES.usage}
    assert usage == {Category.INVALID_SETTING}


EXIT_CODE_WORDS = re.compile(r"exit_code|exit code|sys\.exit|SystemExit|\bEXIT_", re.IGNORECASE)


def upcaster_lines() -> set[tuple[str, int]]:
    """The lines of the upcaster that reads the exit code old `StepFailed` rows recorded."""
    path = Path(orchestrator.__file__).parent / "upcasters.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (upcaster,) = [n for n in ast.walk(tree) if getattr(n, "name", "") == "_step_failed_v1_to_v2"]
    assert isinstance(upcaster, ast.FunctionDef) and upcaster.end_lineno
    return {("orchestrator/upcasters.py", n) for n in range(upcaster.lineno, upcaster.end_lineno + 1)}


@pytest.mark.parametrize("package", [domain, orchestrator, adapters], ids=lambda p: p.__name__)
def test_no_module_outside_the_api_knows_an_exit_code(package: object):
    root = Path(package.__file__).parent  # type: ignore[attr-defined]
    allowed = upcaster_lines()
    mentions = [
        f"{name}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for name in [str(path.relative_to(root.parent))]
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if EXIT_CODE_WORDS.search(line) and (name, n) not in allowed
    ]
    assert mentions == []


def test_the_upcaster_of_old_step_failures_is_the_one_place_that_reads_an_exit_code():
    path = Path(orchestrator.__file__).parent / "upcasters.py"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert any(EXIT_CODE_WORDS.search(lines[n - 1]) for _, n in upcaster_lines())
