"""The click commands hold no logic: each parses, calls a use case of `capsule.orchestrator.usecases`, and
hands the result to a renderer of `capsule.api.render`.

The rule, read from each command's source (every function decorated `@<group>.command` or
`@click.command`, and the functions nested in it):
- statements are only a docstring, imports from `capsule.orchestrator.usecases` (a use case loads
  when its command runs), nested functions, expressions that are calls, assignments of a call to a
  name, `return` of a call, a name or a constant, `with` blocks whose items are calls,
  `raise click.UsageError(...)`, and `if` tests that read only the command's own arguments;
- no loop, no comprehension, no arithmetic, no f-string, no subscript;
- every call is to a use case or request of `orchestrator.usecases`, a function of `api.render`
  or `capsule.api.filters`, `run`, or `click.UsageError`;
- at least one call is to a use case.
And the CLI modules reach the orchestrator only through `capsule.orchestrator.usecases` (and the settings
they parse), never the adapters: nothing is read again after the use case returns.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from capsule import api

API = Path(api.__file__).parent
COMMAND_MODULES = tuple(sorted(p.name for p in API.glob("cli*.py")))
ALLOWED_MODULES = (
    "capsule.api.render",
    "capsule.api.render_settings",
    "capsule.api.render_alerts",
    "capsule.api.render_prune",
    "capsule.api.render_forget",
    "capsule.api.render_destinations",
    "capsule.api.render_keys",
    "capsule.api.render_sync",
    "capsule.api.render_recover",
    "capsule.api.filters",
    "capsule.api.common",
)
ALLOWED_NAMES = {"run"}
ALLOWED_ORCHESTRATOR = (
    "capsule.orchestrator.usecases",
    "capsule.orchestrator.settings",
    "capsule.orchestrator.private",
)
SIMPLE_EXPRESSIONS = (ast.Name, ast.Attribute, ast.Constant, ast.keyword, ast.Load, ast.Store)
# `not as_json`, `read_data and not as_json`: passing on what was parsed, no computation.
SIMPLE_EXPRESSIONS += (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not)


class Imports:
    """Which local names a module's imports bind, and to what module."""

    def __init__(self, tree: ast.Module) -> None:
        self.names: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.names[alias.asname or alias.name.split(".")[0]] = alias.name

    def origin(self, func: ast.expr) -> str:
        """The dotted origin of a called name (`backup.back_up` -> `capsule...usecases.backup.back_up`)."""
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return "<expression>"
        head = self.names.get(func.id, func.id)
        return ".".join([head, *reversed(parts)])


def is_command(fn: ast.FunctionDef) -> bool:
    for d in fn.decorator_list:
        call = d.func if isinstance(d, ast.Call) else d
        if isinstance(call, ast.Attribute) and call.attr == "command":
            return True
    return False


def commands() -> list[tuple[str, ast.FunctionDef, Imports]]:
    found = []
    for name in COMMAND_MODULES:
        tree = ast.parse((API / name).read_text(encoding="utf-8"))
        imports = Imports(tree)
        found += [
            (f"{name}:{node.name}", node, imports)
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and is_command(node)
        ]
    return found


def is_use_case(origin: str) -> bool:
    return origin.startswith("capsule.orchestrator.usecases.")


def call_allowed(origin: str) -> bool:
    return (
        is_use_case(origin)
        or origin.startswith(tuple(f"{m}." for m in ALLOWED_MODULES))
        or origin in ALLOWED_NAMES
        or origin == "click.UsageError"
    )


def expression_problems(node: ast.AST, imports: Imports, params: set[str]) -> list[str]:
    problems = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            origin = imports.origin(sub.func)
            if not call_allowed(origin):
                problems.append(f"line {sub.lineno}: calls {origin}")
        elif isinstance(sub, ast.Lambda | ast.arguments | ast.arg):
            continue
        elif not isinstance(sub, SIMPLE_EXPRESSIONS):
            problems.append(f"line {getattr(sub, 'lineno', '?')}: {type(sub).__name__} is logic")
    return problems


def reads_only_arguments(test: ast.expr, params: set[str]) -> bool:
    allowed = (ast.Name, ast.Constant, ast.BoolOp, ast.UnaryOp, ast.Compare, ast.Load, ast.And, ast.Or)
    allowed += (ast.Not, ast.Is, ast.IsNot, ast.Eq, ast.NotEq)
    for sub in ast.walk(test):
        if not isinstance(sub, allowed):
            return False
        if isinstance(sub, ast.Name) and sub.id not in params:
            return False
    return True


def statement_problems(body: list[ast.stmt], imports: Imports, params: set[str]) -> list[str]:
    problems = []
    for i, stmt in enumerate(body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the docstring
        if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith(ALLOWED_ORCHESTRATOR[0]):
            continue  # a use case loaded when its command runs, not when any command starts
        if isinstance(stmt, ast.FunctionDef):
            inner = {a.arg for a in stmt.args.args}
            problems += statement_problems(stmt.body, imports, params | inner)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            problems += expression_problems(stmt.value, imports, params)
        elif (
            isinstance(stmt, ast.Assign)
            and all(isinstance(t, ast.Name) for t in stmt.targets)
            and isinstance(stmt.value, ast.Call)
        ):
            problems += expression_problems(stmt.value, imports, params)
            params = params | {t.id for t in stmt.targets if isinstance(t, ast.Name)}
        elif isinstance(stmt, ast.Return):
            if stmt.value is not None:
                problems += expression_problems(stmt.value, imports, params)
        elif isinstance(stmt, ast.With):
            for item in stmt.items:
                if not isinstance(item.context_expr, ast.Call):
                    problems.append(f"line {stmt.lineno}: `with` on something other than a call")
                problems += expression_problems(item.context_expr, imports, params)
                if isinstance(item.optional_vars, ast.Name):
                    params = params | {item.optional_vars.id}
            problems += statement_problems(stmt.body, imports, params)
        elif isinstance(stmt, ast.Raise) and isinstance(stmt.exc, ast.Call):
            origin = imports.origin(stmt.exc.func)
            if origin != "click.UsageError":
                problems.append(f"line {stmt.lineno}: raises {origin}, not a usage error")
            problems += expression_problems(stmt.exc, imports, params)
        elif isinstance(stmt, ast.If) and reads_only_arguments(stmt.test, params):
            problems += statement_problems(stmt.body, imports, params)
            problems += statement_problems(stmt.orelse, imports, params)
        else:
            problems.append(f"line {stmt.lineno}: {type(stmt).__name__} is logic")
    return problems


def use_case_calls(fn: ast.FunctionDef, imports: Imports) -> list[str]:
    return [
        imports.origin(n.func)
        for n in ast.walk(fn)
        if isinstance(n, ast.Call) and is_use_case(imports.origin(n.func))
    ]


def test_every_command_module_has_commands_to_check() -> None:
    names = {name.split(":")[1] for name, _, _ in commands()}
    assert {"backup", "restore", "snapshots", "verify", "jobs", "status", "audit", "worker"} <= names


@pytest.mark.parametrize(("name", "fn", "imports"), commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_click_command_only_parses_calls_a_use_case_and_renders(
    name: str, fn: ast.FunctionDef, imports: Imports
) -> None:
    params = {a.arg for a in fn.args.args}
    assert statement_problems(fn.body, imports, params) == [], name
    assert use_case_calls(fn, imports), f"{name} calls no use case of capsule.orchestrator.usecases"


def runtime_imports(tree: ast.Module) -> set[str]:
    """Every module a module imports when it runs (those under `if TYPE_CHECKING:` only name types),
    a name imported from a package counted as its submodule too."""
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for stmt in node.body
        for sub in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda p: p.name)
def test_api_reaches_the_orchestrator_only_through_use_cases(path: Path) -> None:
    reached = runtime_imports(ast.parse(path.read_text(encoding="utf-8")))
    outside = sorted(
        m
        for m in reached
        if m.split(".")[0] in {"adapters", "orchestrator"}
        and not m.startswith(ALLOWED_ORCHESTRATOR)
        and m != "orchestrator"
    )
    assert outside == [], f"{path.name} reaches {outside} around the use cases"


def test_job_commands_do_not_import_the_module_that_registers_them() -> None:
    """`capsule.api.cli` registers the job commands on its group: the import goes one way, with no cycle."""
    from capsule.api.cli import COMMANDS

    tree = ast.parse((API / "cli_jobs.py").read_text(encoding="utf-8"))
    assert "capsule.api.cli" not in runtime_imports(tree)
    assert "capsule.api.cli_jobs" in {command.module for command in COMMANDS.values()}


@pytest.mark.parametrize(
    "source",
    [
        "for x in y:\n    click.echo(x)",
        "click.echo(f'{x}')",
        "result = services.backup(settings)",
        "x = a + b",
        "if len(rows) > 0:\n    run(go)",
        "raise CapsuleError('no')",
        "rows = [r for r in rows]",
        "from capsule.adapters.repository.repo import Repository",
    ],
)
def test_the_rule_catches_logic(source: str) -> None:
    tree = ast.parse(f"import click\nfrom capsule.orchestrator import services\n{source}\n")
    assert statement_problems(tree.body[2:], Imports(tree), {"x", "y", "settings", "rows"}) != []


@pytest.mark.parametrize(
    "source",
    [
        "if as_json and not verify:\n    run(go)",
        "result = backup.back_up(settings, backup.BackupRequest(kind=kind))",
        "with render.progress_bar('x', as_json) as bar:\n    result = backup.back_up(settings, bar)",
        "return render.verify(result, as_json)",
        "raise click.UsageError('give one')",
        "run(lambda: render.jobs(jobs.list_jobs(settings), as_json))",
        "from capsule.orchestrator.usecases.verify import Verify, verify_repository",
    ],
)
def test_the_rule_allows_parsing_a_call_and_rendering(source: str) -> None:
    header = (
        "import click\n"
        "from capsule.api import render\n"
        "from capsule.orchestrator.usecases import backup, jobs\n"
    )
    tree = ast.parse(
        f"def f():\n    pass\n{header}" + (f"def g():\n    {source.replace(chr(10), chr(10) + '    ')}\n")
    )
    fn = tree.body[-1]
    assert isinstance(fn, ast.FunctionDef)
    assert statement_problems(fn.body, Imports(tree), {"settings", "kind", "as_json", "verify"}) == []
