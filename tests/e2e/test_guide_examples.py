"""The guide's examples are what Capsule prints: each one runs, in the guide's order, on a sample shop.

`docs/backup-restore-guide.md` shows commands (a ```sh block) and what they print (the plain block
right after it). This test reads them all, runs them one after the other in one sample shop made by
`capsule demo create`, as a reader following the guide would, and compares what each printed with
the guide, line by line:

- the shop's folder is written `/srv/shop`, the machine `pos-server`, the person `ana`;
- numbers stand for any number, and a run of spaces for any run of spaces, so sizes, counts, times
  and the width of a table's columns may differ, and the words may not;
- a snapshot or job id in the guide stands for the real id it first lines up with, and always for
  that one afterwards: a later command that names it runs with the real id, and an output that
  names it must show that id;
- the structured log a command writes to a pipe is left out, as a person at a terminal does not
  see it.

A comment just before an example's command block says how to take it:
`<!-- example: some -->` when the guide shows lines the shop at that point cannot print (a table of
every status, say): then each printed line must have its shape in the guide, but not the reverse,
and an id there stands for any id;
`setup=NAME` prepares the shop first (SETUPS below); `exit=N` is the exit code expected (0 when not
given); `not run: WHY` leaves the example out, saying why. Before a message quoted alone (a plain
block with no command before it), `run: COMMAND` at the end of the comment names the command that
prints it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.helpers import CAPSULE, clean_env

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "backup-restore-guide.md"
SHOP = "/srv/shop"
MACHINE = "pos-server"
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!-- example: (.*) -->$")

JOB_ID = r"\d{14}-[0-9a-f]{8}"
TOKENS = re.compile(
    rf"(?P<job>\b{JOB_ID}\b)"
    r"|(?P<full>\b[0-9a-f]{64}\b)"
    r"|(?P<short>\b[0-9a-f]{12}\b)"
    r"|(?P<hex>\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,}\b)"
    r"|(?P<size>\b\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)\b)"
    r"|(?P<number>\d+(?:\.\d+)?)"
    r"|(?P<space>\s+)"
)
ID_PATTERNS = {"job": JOB_ID, "full": "[0-9a-f]{64}", "short": "[0-9a-f]{12}"}


@dataclass
class Example:
    line: int
    commands: list[str]
    printed: list[str]
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"guide line {self.line}: {' && '.join(self.commands)}"


def blocks(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, closing line, language) of every fenced block."""
    found, i = [], 0
    while i < len(lines):
        if m := FENCE.match(lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append((i, end, m.group(1)))
            i = end + 1
        else:
            i += 1
    return found


def parse_options(text: str) -> dict[str, str]:
    if text.startswith("not run:"):
        return {"not run": text.removeprefix("not run:").strip()}
    text, _, command = text.partition("run:")
    options = {"run": command.strip()} if command else {}
    for word in text.split():
        key, _, value = word.partition("=")
        options[key] = value
    return options


def examples() -> list[Example]:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    found = []
    fenced = blocks(lines)
    for start, end, language in fenced:  # a message quoted alone, with the command that prints it
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        mark = MARK.match(before)
        if not language and mark and "run:" in mark.group(1):
            options = parse_options(mark.group(1))
            found.append(Example(start + 1, [options["run"]], lines[start + 1 : end], options))
    for (start, end, language), (next_start, next_end, next_language) in itertools.pairwise(fenced):
        between = lines[end + 1 : next_start]
        if language != "sh" or next_language or any(line.strip() for line in between):
            continue
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        mark = MARK.match(before)
        commands = [c for c in lines[start + 1 : end] if c.strip() and not c.lstrip().startswith("#")]
        printed = lines[next_start + 1 : next_end]
        found.append(Example(start + 1, commands, printed, parse_options(mark.group(1)) if mark else {}))
    return sorted(found, key=lambda e: e.line)


class Ids:
    """The guide's ids and the real ids they stand for."""

    def __init__(self) -> None:
        self.real: dict[str, str] = {}

    def pattern(self, guide_line: str, *, bind: bool = True) -> tuple[re.Pattern[str], list[tuple[str, str]]]:
        """A pattern for what the guide line stands for, and the ids it will bind (group, guide id).

        Without `bind`, an id stands for any id: the line only shows a shape.
        """
        parts, binds, at = [], [], 0
        for m in TOKENS.finditer(guide_line):
            parts.append(re.escape(guide_line[at : m.start()]))
            at = m.end()
            kind, text = m.lastgroup, m.group()
            assert kind is not None
            if kind in ID_PATTERNS and not bind:
                parts.append(ID_PATTERNS[kind])
            elif kind in ID_PATTERNS:
                if text in self.real:
                    parts.append(re.escape(self.real[text]))
                else:
                    group = f"g{len(binds)}"
                    binds.append((group, text))
                    parts.append(f"(?P<{group}>{ID_PATTERNS[kind]})")
            elif kind == "hex":
                parts.append("[0-9a-f]+")
            elif kind == "size":
                parts.append(r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)")
            elif kind == "number":
                parts.append(r"\d+(?:\.\d+)?")
            else:
                parts.append(r"\s+")
        parts.append(re.escape(guide_line[at:]))
        return re.compile("".join(parts)), binds

    def match(self, guide_line: str, printed: str, *, bind: bool = True) -> bool:
        pattern, binds = self.pattern(guide_line, bind=bind)
        m = pattern.fullmatch(printed)
        if m is None:
            return False
        for group, guide_id in binds:
            self.real.setdefault(guide_id, m.group(group))
        return True

    def command(self, command: str) -> str:
        def real(m: re.Match[str]) -> str:
            text = m.group()
            if text in self.real:
                return self.real[text]
            longer = [v for k, v in self.real.items() if len(k) == 64 and k.startswith(text)]
            assert longer or m.lastgroup not in ID_PATTERNS, f"the guide names {text} before showing it"
            return longer[0][: len(text)] if longer else text

        return TOKENS.sub(lambda m: real(m) if m.lastgroup in ID_PATTERNS else m.group(), command)


def what_a_person_sees(shop: Path, proc: subprocess.CompletedProcess[str]) -> list[str]:
    """stdout and stderr without the structured log lines, written as the guide writes them."""
    seen = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("{"):
            try:
                json.loads(line)
                continue
            except ValueError:
                pass
        line = line.replace(str(shop), SHOP).replace(socket.gethostname(), MACHINE)
        line = re.sub(r"person:[^@\s]+@", "person:ana@", line)
        if line.strip():
            seen.append(line.rstrip())
    return seen


def compare(example: Example, printed: list[str], ids: Ids) -> list[str]:
    """What differs, as lines to read; [] when the printed lines are the guide's."""
    expected = [line.rstrip() for line in example.printed if line.strip()]
    used: set[int] = set()
    problems = []
    bind = "some" not in example.options
    for line in printed:
        # A guide line not matched yet comes first: two printed lines that differ only in their
        # numbers then stand for two lines of the guide, as they would be read.
        order = [i for i in range(len(expected)) if i not in used] + sorted(used)
        hit = next((i for i in order if ids.match(expected[i], line, bind=bind)), None)
        if hit is None:
            problems.append(f"  printed, not in the guide: {line}")
        else:
            used.add(hit)
    if "some" not in example.options:
        problems += [f"  in the guide, not printed:  {g}" for i, g in enumerate(expected) if i not in used]
    return problems


# --- setups: what a reader would have done by hand before an example -----------------------------------


def a_backup_killed_while_it_held_the_lock(shop: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [*CAPSULE, "backup", "--kind", "database"],
        cwd=shop,
        env={**env, "CAPSULE_FAULTS": "store:locked@pause=60"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    locks = shop / "data" / "backups" / "locks"
    deadline = time.monotonic() + 60
    # A lock is written under a temporary name and renamed: only a lock by its own name counts.
    while not (locks.is_dir() and any(not p.name.startswith(".") for p in locks.iterdir())):
        assert time.monotonic() < deadline and proc.poll() is None, "the backup never took its lock"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def a_damaged_event_log(shop: Path, env: dict[str, str]) -> None:
    """A page of the log overwritten, as a disk that lost it would leave it."""
    log = shop / "data" / "capsule" / "events.db"
    conn = sqlite3.connect(log)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()
    data = bytearray(log.read_bytes())
    data[-page:] = random.Random(13).randbytes(page)
    log.write_bytes(bytes(data))


def a_misspelled_key_in_capsule_toml(shop: Path, env: dict[str, str]) -> Callable[[], None]:
    toml = shop / "capsule.toml"
    toml.write_text("# the shop's settings\nworkers = 2\nlock_wait_second = 5\n", encoding="utf-8")
    return toml.unlink


def snapshots_forgotten_hours_ago(shop: Path, env: dict[str, str]) -> None:
    """Half the images taken off the shop and backed up; every snapshot but the newest of each kind
    forgotten (its file deleted from the repository, as forgetting does); every pack three hours
    old, since a prune leaves younger packs alone."""
    images = sorted(p for p in (shop / "data" / "uploads" / "products").rglob("*.jpg"))
    for image in images[::2]:
        image.unlink()
    backed_up = capsule(["backup", "--kind", "files"], shop, env)
    assert backed_up.returncode == 0, backed_up.stderr
    listed = capsule(["snapshots", "--json"], shop, env)
    assert listed.returncode == 0, listed.stderr
    newest: dict[str, str] = {}
    for snapshot in json.loads(listed.stdout):  # oldest first
        newest[snapshot["kind"]] = snapshot["snapshot_id"]
    repository = shop / "data" / "backups"
    for snapshot in json.loads(listed.stdout):
        if snapshot["snapshot_id"] not in newest.values():
            (repository / "snapshots" / snapshot["snapshot_id"]).unlink()
    when = time.time() - 3 * 3600
    for pack in (repository / "data").rglob("*"):
        if pack.is_file():
            os.utime(pack, (when, when))


SETUPS: dict[str, Callable[[Path, dict[str, str]], Callable[[], None] | None]] = {
    "killed-backup": a_backup_killed_while_it_held_the_lock,
    "damaged-event-log": a_damaged_event_log,
    "misspelled-toml": a_misspelled_key_in_capsule_toml,
    "forgotten-snapshots": snapshots_forgotten_hours_ago,
}


EXAMPLES = examples()


def test_the_guide_has_examples_to_check() -> None:
    run = [e for e in EXAMPLES if "not run" not in e.options]
    assert len(run) >= 15, [str(e) for e in EXAMPLES]
    assert {e.options.get("setup") for e in run} - {None} <= set(SETUPS)


@pytest.mark.slow
def test_the_guides_examples_print_what_the_guide_shows() -> None:
    # A short path, as a shop's is: the audit's details are cut at 100 characters, paths included.
    with tempfile.TemporaryDirectory(prefix="guide-") as folder:
        run_the_guide(Path(folder) / "shop")


def capsule(args: list[str], shop: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CAPSULE, *args], cwd=shop, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def run_the_guide(shop: Path) -> None:
    shop.mkdir()
    # The guide's shop keeps its clock in Berlin: its local times are CET.
    env = {**clean_env(), "TZ": "Europe/Berlin"}
    made = capsule(["demo", "create"], shop, env)
    assert made.returncode == 0, made.stderr
    ids = Ids()
    failures = []
    for example in EXAMPLES:
        if "not run" in example.options:
            continue
        undo = SETUPS[setup](shop, env) if (setup := example.options.get("setup")) else None
        printed: list[str] = []
        codes = []
        for command in example.commands:
            argv = shlex.split(ids.command(command))
            assert argv[0] == "capsule", f"{example}: only capsule commands can be checked"
            proc = capsule(argv[1:], shop, env)
            codes.append(proc.returncode)
            printed += what_a_person_sees(shop, proc)
        if undo is not None:
            undo()
        expected_code = int(example.options.get("exit") or 0)
        problems = compare(example, printed, ids)
        if any(code != expected_code for code in codes):
            problems.insert(0, f"  exit codes {codes}, the guide expects {expected_code}")
        if problems:
            failures.append("\n".join([str(example), *problems]))
    assert not failures, "\n\n".join(failures)
