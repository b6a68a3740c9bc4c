"""A restore leaving on Ctrl-C or SIGTERM leaves no temporary file behind, even one that a thread of
its own was starting while the target folder was being cleaned.

The process removes its temporary files (`.<name>.capsule-restore-<pid>-...`) and exits without
waiting for the threads that write them (orchestrator/jobrunner._interrupted). A file a thread
made after the folder was searched stayed until the next restore into that folder. Here the race
is made certain: a thread starts writing a file while the folder is being searched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys, threading
from datetime import UTC, datetime
from pathlib import Path
from capsule.adapters import partials
from capsule.adapters.files import restore as files_restore
from capsule.adapters.files.backup import backup_files
from capsule.adapters.files.tree import iter_entries
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.repo import Repository

root, guarded = Path(sys.argv[1]), sys.argv[2] == "guarded"
source, to = root / "source", root / "to"
source.mkdir()
(source / "a.jpg").write_bytes(os.urandom(300_000))
repo = Repository.init(LocalBackend(root / "repo"), root / "home" / "repository.key", None, 1 << 20)
manifest = backup_files(repo, source, now=datetime.now(UTC)).manifest
entry = next(e for e in iter_entries(repo, manifest) if e.path == "a.jpg")
to.mkdir()

batches = files_restore._file_batches
def slow_batches(repo, entry):  # the file stays half written until the process is gone
    yield from batches(repo, entry)
    threading.Event().wait()
files_restore._file_batches = slow_batches

walked = os.walk
writing = []
def walk_while_a_thread_starts_a_file(top, *args, **kwargs):
    for found in walked(top, *args, **kwargs):
        if not writing:
            thread = threading.Thread(
                target=files_restore.write_file, args=(repo, entry, to / "a.jpg"), daemon=True
            )
            writing.append(thread)
            thread.start()
            thread.join(1.0)  # it has made its file, or waits for the exit
        yield found
os.walk = walk_while_a_thread_starts_a_file

if guarded:
    partials.stop_partials()
files_restore.remove_partial_writes(to, owner="mine")
print(len(os.listdir(to)), flush=True)
os._exit(0)
"""


def _leave(tmp_path: Path, how: str) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1], sorted(p.name for p in (tmp_path / "to").iterdir())


def test_a_file_a_thread_starts_while_the_restore_leaves_is_not_left_behind(tmp_path: Path) -> None:
    printed, left = _leave(tmp_path, "guarded")
    assert (printed, left) == ("0", [])


def test_without_the_guard_the_search_alone_misses_that_file(tmp_path: Path) -> None:
    """The race is real: searching the folder, as the exit did alone, leaves the file behind."""
    printed, left = _leave(tmp_path, "search only")
    assert printed == "1"
    assert len(left) == 1
    assert left[0].startswith(".a.jpg.capsule-restore-"), left
