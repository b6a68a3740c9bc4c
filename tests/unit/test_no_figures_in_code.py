"""Measured figures live in docs/performance.md, not in the code's comments and docstrings.

A comment may say why the code is as it is; a benchmark's figure ages, and performance.md keeps
each one with its date, the machine and how it was measured. The rule this test holds comments and
docstrings of `capsule.domain`, `capsule.orchestrator`, `capsule.adapters` and `capsule.api` to:

- Allowed: what a thing is or how big it is by definition, and settings. Sizes ("16 MiB packs",
  "about 54 MB of records", "4 KiB pages"), counts ("262,144 records"), shares of a sample
  ("about 5% are SVG"), durations a setting defines ("a lease of 60 s", "the switch interval,
  5 ms by default"), and comparisons in words ("several times faster").
- Refused: what running the code measured. Any of these in one comment block or docstring:
  a duration in ms, µs or ns (Capsule's settings are in seconds), unless followed by "by default";
  a duration in seconds with a fraction ("0.69 s"); a rate ("128 MB/s", "736 events a second");
  a speed-up ("1.34x", also with the multiplication sign; "ten times faster") or a share of time
  ("22% less time", "a quarter of the time", "three times the parsing"); two figures set against
  each other ("3.13 s against 3.37 s", "2.24 vs 2.25"); "took N" or "cost(s) about N"; a size
  beside "RSS"; "went from N"; a figure in a sentence that names "the reference machine" or
  "this machine".

Such a comment keeps the reason in words and points to docs/performance.md and its section.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import capsule.adapters
import capsule.api
import capsule.domain
import capsule.orchestrator

PACKAGES = (capsule.domain, capsule.orchestrator, capsule.adapters, capsule.api)

_NUM = r"\d[\d,]*(?:\.\d+)?"
_WORD_NUM = r"(?:two|three|four|five|six|seven|eight|nine|ten|twenty|a hundred|\d[\d,]*(?:\.\d+)?)"
_SECONDS = r"(?:s|secs?|seconds?)"
_SIZE = r"(?:[KMGT]i?B|bytes?)"

_RATIO = r"(?:faster|slower|quicker|as |the |more |less )"
_SHARE = r"(?:less|more|faster|slower|quicker|longer|shorter)"
_MACHINE = r"\bon (?:the reference|this) machine\b(?!'s)"

MEASURED = [
    ("a duration under a second", re.compile(rf"{_NUM}\s*(?:ns|µs|us|ms)\b(?!\s+by default)")),
    ("a duration in seconds with a fraction", re.compile(rf"\d\.\d+\s*{_SECONDS}\b")),
    ("a rate", re.compile(rf"{_NUM}\s*(?:{_SIZE}|[a-z]+)?\s*(?:/s\b|/sec\b|per second|a second\b)")),
    ("a speed-up", re.compile(rf"{_NUM}[\u00d7x](?![\w.])|{_WORD_NUM}\s+times\s+{_RATIO}")),
    ("a share of time", re.compile(rf"{_NUM}\s*%\s+{_SHARE}\b")),
    (
        "a share of time",
        re.compile(r"\b(?:half|a third|a quarter|a fifth|a tenth) of (?:the|a) (?:time|second)\b"),
    ),
    ("figures set against each other", re.compile(rf"{_NUM}\s*\w*\s+(?:against|vs\.?|versus)\s+{_NUM}")),
    ("a timing", re.compile(rf"\b(?:took|costs?(?: \w+)? about)\s+(?:about\s+)?{_NUM}")),
    ("memory measured", re.compile(rf"\bRSS\b(?:\W+\w+){{0,5}}?\W+{_NUM}\s*{_SIZE}")),
    ("memory measured", re.compile(rf"{_NUM}\s*{_SIZE}\s+(?:of\s+)?(?:peak\s+)?RSS\b")),
    ("a change measured", re.compile(rf"\bwent from\s+\S*{_NUM}")),
    ("a figure of a machine", re.compile(rf"{_NUM}[^.]*{_MACHINE}|{_MACHINE}[^.]*{_NUM}")),
]


def measured_figures(text: str) -> list[str]:
    """What in `text` (one comment block or docstring, lines joined) reads as a measured figure."""
    flat = " ".join(text.split())
    return [f"{what}: {m.group(0)!r}" for what, pattern in MEASURED for m in pattern.finditer(flat)]


def prose(source: str) -> list[tuple[int, str]]:
    """(first line, text) of every docstring and every block of comments on consecutive lines."""
    found: list[tuple[int, str]] = []
    block: list[str] = []
    start = last = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        if block and line != last + 1:
            found.append((start, " ".join(block)))
            block = []
        if not block:
            start = line
        block.append(tok.string.lstrip("#"))
        last = line
    if block:
        found.append((start, " ".join(block)))
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        for stmt in body if isinstance(body, list) else []:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                found.append((stmt.lineno, stmt.value.value))
    return found


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in Path(package.__file__ or "").parent.rglob("*.py"))


def label(path: Path) -> str:
    return "/".join(path.parts[path.parts.index("capsule") + 1 :]) if "capsule" in path.parts else path.name


def test_the_four_packages_have_sources_to_read():
    names = {label(p) for p in source_files()}
    expected = {"domain/events.py", "adapters/repository/index.py", "api/entry.py", "orchestrator/steps.py"}
    assert expected <= names


@pytest.mark.parametrize("path", source_files(), ids=label)
def test_no_comment_or_docstring_quotes_a_measured_figure(path: Path):
    found = [
        f"{label(path)}:{line}: {figure}"
        for line, text in prose(path.read_text(encoding="utf-8"))
        for figure in measured_figures(text)
    ]
    assert found == [], (
        "move measured figures to docs/performance.md and leave the reason and a pointer: " + "; ".join(found)
    )


@pytest.mark.parametrize(
    "text",
    [
        "importing the dialect costs every command about 25 ms at start.",
        "(20,000 images: 5.71-5.79 s against 5.88-6.35 s)",
        "1,024 such look-ups took\n    0.69 s that way.",
        "On 4 KiB pages level 1 compresses as well as level 3 (2.24 vs 2.25) for 22% less time.",
        "peak RSS grew with every pack. For a 2 GiB database, peak\n RSS went from 292 MB to 270 MB.",
        "zstd opens pages at about 4 us each",
        "a first backup at 128 MB/s",
        "8,998 events a second",
        "first backup at 1.34\u00d7 restic's speed",
        "a backup at 0.88x restic's",
        "numpy moves these about ten times faster",
        "the collector's passes would cost a quarter of the time",
        "which costs about three times the parsing itself",
        "0.16-0.18 s of one core for a 1 GiB database on the reference machine",
        "cost it about 0.2 s",
    ],
)
def test_a_measured_figure_is_found(text: str):
    assert measured_figures(text) != []


@pytest.mark.parametrize(
    "text",
    [
        "Packs of about 16 MiB; 4 KiB database pages; 262,144 records a GiB.",
        "Runs stay in memory while they hold this many records in all (about 54 MB).",
        "About 60 KB typical, up to 5 MB: 20,000 files make 2 to 3 GB; about 5% are SVG.",
        "A thread waits up to the switch interval (5 ms by default) for the interpreter.",
        "A job that cannot take the lock within 30 s fails; the lease is 60 seconds.",
        "One frame for 64 pages opens several times faster than 64 (see docs/performance.md).",
        "The actor for commands typed at this machine's terminal.",
        "Brings one payload from schema version n to n + 1; 0x7FFF is refused; 2 x 32 bytes.",
        "A lease of 2 heartbeats at least; 12 bits a blob: about 1% of absent ids get past it.",
    ],
)
def test_a_definition_is_not_a_measured_figure(text: str):
    assert measured_figures(text) == []


POINTER = re.compile(r'docs/performance\.md,\s+"([^"]+)"')


def performance_headings() -> set[str]:
    """Every heading of performance.md, also without the date in brackets that ends a dated one."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "performance.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    return headings | {re.sub(r"\s*\([^()]*\)$", "", h) for h in headings}


def test_every_pointer_to_performance_md_names_one_of_its_sections():
    headings = performance_headings()
    pointers = [
        (label(path), line, POINTER.findall(" ".join(text.split())))
        for path in source_files()
        for line, text in prose(path.read_text(encoding="utf-8"))
    ]
    named = [(where, line, name) for where, line, names in pointers for name in names]
    assert len(named) >= 10
    assert [f"{where}:{line}: {name!r}" for where, line, name in named if name not in headings] == []
