"""A prune killed at any instant loses nothing a kept snapshot needs, and the next run finishes it.

A real process runs the phases as the job does (each on the repository opened afresh, the plan and
the repack's result kept in files between them) and is killed with SIGKILL at a named fault point,
or at a random instant. The phases are then run again from where it stopped, and a fresh prune
after them: every kept snapshot restores byte-identical, `verify --read-data` is clean, and nothing
is left for a third prune.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capsule.adapters.repository.prune import plan_prune, repack, rewrite_index
from tests.integration.prune_lab import KiB, Lab, prune
from tests.integration.test_prune_engine import _history

RUNNER = """
import json, os, sys
from pathlib import Path
from capsule.orchestrator import faults
from capsule.adapters.repository import prune
from capsule.adapters.repository.backends.local import LocalBackend
from capsule.adapters.repository.lock import PRUNE, locked
from capsule.adapters.repository.repo import Repository

prune.REWRITE_FLUSH_BLOBS = 20  # several index files: a kill can fall between two
repository, key, state = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def fresh():
    return Repository.open(LocalBackend(repository), key)

def kept(name, make, load):
    path = state / name
    if path.exists():
        return load(json.loads(path.read_text()))
    made = make()
    path.with_suffix(".tmp").write_text(json.dumps(made.to_json()))
    os.replace(path.with_suffix(".tmp"), path)
    return made

with locked(LocalBackend(repository), PRUNE):
    plan = kept("plan.json", lambda: prune.plan_prune(fresh()), prune.PrunePlan.from_json)
    repacked = kept(
        "repacked.json",
        lambda: prune.repack(fresh(), plan, checkpoint=faults.point),
        prune.Repacked.from_json,
    )
    if not (state / "rewritten").exists():
        prune.rewrite_index(fresh(), plan, repacked, checkpoint=faults.point)
        (state / "rewritten").write_text("")
    prune.finish_prune(fresh(), plan, repacked, checkpoint=faults.point)
print("done", flush=True)
"""


def _run(lab: Lab, state: Path, faults: str = "") -> subprocess.Popen[str]:
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSULE_")}
    if faults:
        env["CAPSULE_FAULTS"] = faults
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(lab.repository), str(lab.key), str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return proc.returncode, out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """Six snapshots, four of them forgotten, every pack hours old: much to delete and repack."""
    lab = Lab(tmp_path_factory.mktemp("prune-kills") / "lab", pack_size=64 * KiB)
    made = _history(lab)
    for sid in made[:4]:
        lab.forget(sid)
    lab.age()
    plan = plan_prune(lab.open())
    assert plan.delete and plan.repack
    return lab


def _after_the_kill(lab: Lab, state: Path, out: Path, *, resume: bool = True) -> None:
    """Run the interrupted prune to its end (or, without `resume`, leave it), then a fresh one;
    check the repository each time."""
    if resume:
        code, stdout = _finish(_run(lab, state))
        assert code == 0 and stdout.splitlines()[-1] == "done"
        lab.check(out / "resumed")
    lab.age()  # what a killed repack wrote is garbage once old
    prune(lab)
    lab.check(out / "pruned-again")
    lab.age()
    last = plan_prune(lab.open())
    assert (last.delete, last.repack) == ((), ()), "garbage left after the second prune"


POINTS = [
    "prune:repack-pack-written",
    "prune:repack-indexed",
    "prune:index-written",
    "prune:index-superseding",
    "prune:old-index-removed",
    "prune:pack-deleted",
]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_prune_killed_at_a_fault_point_loses_nothing(template: Lab, tmp_path: Path, point: str) -> None:
    lab = template.copy(tmp_path / "lab")
    state = tmp_path / "state"
    code, _ = _finish(_run(lab, state, faults=point))
    assert code == -signal.SIGKILL, f"the prune never reached {point}"
    lab.check(tmp_path / "killed")  # before anything else runs: already whole
    _after_the_kill(lab, state, tmp_path)


@pytest.mark.slow
def test_a_prune_killed_at_random_instants_loses_nothing(template: Lab, tmp_path: Path) -> None:
    timing = template.copy(tmp_path / "timing")
    started = time.monotonic()
    assert _finish(_run(timing, tmp_path / "timing-state"))[0] == 0
    whole = time.monotonic() - started
    rng = random.Random(20261206)
    for attempt in range(4):
        lab = template.copy(tmp_path / f"lab-{attempt}")
        state = tmp_path / f"state-{attempt}"
        proc = _run(lab, state)
        time.sleep(rng.uniform(0.2, whole))
        proc.send_signal(signal.SIGKILL)
        _finish(proc)
        lab.check(tmp_path / f"killed-{attempt}")
        # Half the time the job resumes the killed prune; otherwise a new prune starts afresh.
        _after_the_kill(lab, state, tmp_path / f"out-{attempt}", resume=attempt % 2 == 0)


@pytest.mark.slow
def test_a_prune_killed_after_rescuing_a_pack_keeps_it(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    backup, b_bytes = lab.one_file_only_a_forgotten_snapshot_held()  # loaded the index before the rewrite
    state = tmp_path / "state"
    state.mkdir()
    plan = plan_prune(lab.open())
    repacked = repack(lab.open(), plan)
    rewrite_index(lab.open(), plan, repacked)
    (state / "plan.json").write_text(json.dumps(plan.to_json()))
    (state / "repacked.json").write_text(json.dumps(repacked.to_json()))
    (state / "rewritten").write_text("")
    (lab.uploads / "b.bin").write_bytes(b_bytes)
    lab.backup_files(backup)

    code, _ = _finish(_run(lab, state, faults="prune:rescued"))
    assert code == -signal.SIGKILL
    assert set(plan.condemned) <= lab.packs()
    _after_the_kill(lab, state, tmp_path)  # the late snapshot restores: its pack was kept
