"""`capsule prune` as a shop owner runs it after snapshots were forgotten: what it prints, that its
figures are the repository's size on disk, that `--dry-run` changes nothing, its JSON, its exit codes.

Snapshots are forgotten by deleting their files through the repository backend, as the forget
command does once it has decided which ones go.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from capsule.adapters.repository.backends import open_backend
from capsule.api.render import human
from tests.e2e.test_json_vocabulary import check_vocabulary
from tests.integration.helpers import CAPSULE, Shop, one_line_error

PRUNED = {
    "job_id",
    "dry_run",
    "repack_unused_percent",
    "bytes_before",
    "bytes_after",
    "bytes_freed",
    "unused_bytes",
    "packs_deleted",
    "packs_repacked",
    "packs_rescued",
    "seconds",
    "packs_young",
    "bytes_deleted",
    "bytes_written",
}
SMALL_PACKS = {"CAPSULE_PACK_SIZE": str(1024 * 1024)}


def json_of(shop: Shop, *args: str, expect: int = 0) -> Any:
    doc = json.loads(shop.run(*args, "--json", expect=expect, env=SMALL_PACKS).stdout)
    check_vocabulary(" ".join(args), doc)
    return doc


def on_disk(repository: Path) -> int:
    """The bytes of the repository's files, locks and temporary files aside."""
    return sum(
        p.stat().st_size
        for p in repository.rglob("*")
        if p.is_file() and "locks" not in p.relative_to(repository).parts and not p.name.startswith(".")
    )


def files_of(repository: Path) -> dict[str, tuple[int, int]]:
    """Every file but the locks, with its size and modification time: what a dry run must not touch."""
    return {
        str(p.relative_to(repository)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in repository.rglob("*")
        if p.is_file() and "locks" not in p.relative_to(repository).parts
    }


def write_images(folder: Path, names: range, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / f"img-{n:03}.jpg").write_bytes(rng.randbytes(300 * 1024))


@pytest.fixture
def forgotten(shop: Shop) -> Shop:
    """Two images snapshots, the first forgotten, its packs three hours old: a prune leaves younger
    packs alone, since a backup running now may still adopt them."""
    uploads = shop.root / "data" / "uploads" / "products"
    rng = random.Random(11)
    write_images(uploads, range(12), rng)
    first = json_of(shop, "backup", "--kind", "files")["snapshot_id"]
    for n in range(2, 12):
        (uploads / f"img-{n:03}.jpg").unlink()
    write_images(uploads, range(20, 23), rng)
    json_of(shop, "backup", "--kind", "files")
    open_backend(shop.repository).remove("snapshots", first)
    when = time.time() - 3 * 3600
    for pack in (shop.repository / "data").rglob("*"):
        os.utime(pack, (when, when))
    return shop


@pytest.mark.slow  # six commands, each a process of its own
def test_prune_gives_back_the_space_of_a_forgotten_snapshot_and_says_how_much(forgotten: Shop) -> None:
    shop = forgotten
    untouched = files_of(shop.repository)
    before = on_disk(shop.repository)

    dry = shop.run("prune", "--dry-run", expect=0, env=SMALL_PACKS).stdout
    dry_doc = json_of(shop, "prune", "--dry-run")

    assert files_of(shop.repository) == untouched, "a dry run changed the repository"
    assert set(dry_doc) == PRUNED and dry_doc["dry_run"] is True and dry_doc["job_id"] is None
    assert dry_doc["bytes_before"] == before and dry_doc["bytes_freed"] > 2 * 1024 * 1024
    assert f"A prune would give back about {human(dry_doc['bytes_freed'])}: " in dry
    assert "Nothing was changed (dry run)" in dry
    assert [j for j in json_of(shop, "jobs") if j["job_type"] == "prune"] == []

    printed = shop.run("prune", expect=0, env=SMALL_PACKS).stdout

    after = on_disk(shop.repository)
    assert after < before - 2 * 1024 * 1024
    assert f"Repository: {human(before)} before, {human(after)} after" in printed
    (job,) = [j for j in json_of(shop, "jobs") if j["job_type"] == "prune"]
    assert job["status"] == "completed" and f"Prune {job['job_id']}: gave back " in printed
    status = json_of(shop, "status")
    assert status["space"]["stored_bytes"] == after
    assert status["space"]["last_prune"]["job_id"] == job["job_id"]
    assert "Last prune: " in shop.run("status", expect=0).stdout
    assert json_of(shop, "verify", "--read-data")["ok"] is True

    again = json_of(shop, "prune")
    assert set(again) == PRUNED and again["dry_run"] is False
    assert (again["bytes_before"], again["bytes_after"]) == (after, on_disk(shop.repository))
    assert (again["bytes_freed"], again["packs_deleted"]) == (0, 0)


def test_status_says_never_before_the_first_prune(shop: Shop) -> None:
    shown = shop.run("status", expect=0).stdout
    assert "Last prune: never" in shown
    assert f"Repository size: {human(on_disk(shop.repository))}; unused space not measured yet" in shown


def test_prune_without_a_repository_says_what_to_do_and_exits_1(tmp_path: Path, shop: Shop) -> None:
    missing = tmp_path / "nowhere"
    failed = shop.run("prune", env={"CAPSULE_REPOSITORY": str(missing)}, expect=1)
    assert (
        one_line_error(failed)
        == f"capsule: there is no repository at {missing}; create one with `capsule init`"
    )
    assert not missing.exists()
    assert [j for j in json_of(shop, "jobs") if j["job_type"] == "prune"] == [], (
        "a job was recorded for nothing"
    )


def test_prune_refuses_an_unknown_option_with_exit_2(shop: Shop) -> None:
    assert "No such option" in shop.run("prune", "--all", expect=2).stderr


def test_prune_is_in_the_help() -> None:
    helped = subprocess.run([*CAPSULE, "prune", "--help"], capture_output=True, text=True, check=True)
    assert (
        "Give back the space" in helped.stdout and "--dry-run" in helped.stdout and "--json" in helped.stdout
    )


@pytest.mark.slow
def test_ctrl_c_pauses_a_prune_and_the_next_prune_finishes_it(forgotten: Shop, tmp_path: Path) -> None:
    # Held once its wait step's first attempt is recorded started, on the default lease: the
    # attempt is still this process's when Ctrl-C comes (a short lease ran out during the hold,
    # which has no heartbeat, and the test then met the job between two attempts).
    shop = forgotten
    never = tmp_path / "never"
    proc = shop.popen("prune", env={"CAPSULE_FAULTS": f"wait:started@until={never}"})
    deadline = time.monotonic() + 60
    while not [
        j
        for j in json_of(shop, "jobs")
        if j["job_type"] == "prune" and (j["current_step"], j["attempt"]) == ("wait", 1)
    ]:
        assert time.monotonic() < deadline and proc.poll() is None, "the prune never started its wait step"
        time.sleep(0.2)

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    (job,) = [j for j in json_of(shop, "jobs") if j["job_type"] == "prune"]
    assert job["status"] == "interrupted", err
    assert f"prune job {job['job_id']} is paused" in err and "run `capsule prune` again" in err
    finished = json_of(shop, "prune")
    assert finished["job_id"] == job["job_id"] and finished["bytes_freed"] > 0
    assert json_of(shop, "verify", "--read-data")["ok"] is True


@pytest.mark.slow
def test_ctrl_c_between_two_steps_of_a_prune_records_it_interrupted_and_the_next_prune_finishes_it(
    forgotten: Shop, tmp_path: Path
) -> None:
    # The prune is held after its index step completed, before its wait step's first attempt is
    # recorded: the jobs list already names `wait` as its current step, and nothing runs it.
    shop = forgotten
    never = tmp_path / "never"
    proc = shop.popen("prune", env={"CAPSULE_FAULTS": f"wait:starting@until={never}"})
    deadline = time.monotonic() + 60
    while not [j for j in shop.jobs_seen() if j["job_type"] == "prune" and j["current_step"] == "wait"]:
        assert time.monotonic() < deadline and proc.poll() is None, "the prune never got to its wait step"
        time.sleep(0.2)

    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    (job,) = [j for j in json_of(shop, "jobs") if j["job_type"] == "prune"]
    assert (job["status"], job["current_step"]) == ("interrupted", "wait"), err
    assert f"prune job {job['job_id']} is paused" in err
    finished = json_of(shop, "prune")
    assert finished["job_id"] == job["job_id"] and finished["bytes_freed"] > 0
    assert json_of(shop, "verify", "--read-data")["ok"] is True


@pytest.mark.slow
def test_a_forget_killed_before_deleting_its_manifest_is_finished_by_prune_which_gives_its_space_back(
    shop: Shop,
) -> None:
    uploads = shop.root / "data" / "uploads" / "products"
    rng = random.Random(12)
    write_images(uploads, range(12), rng)
    first = json_of(shop, "backup", "--kind", "files")["snapshot_id"]
    for n in range(2, 12):
        (uploads / f"img-{n:03}.jpg").unlink()
    json_of(shop, "backup", "--kind", "files")
    when = time.time() - 3 * 3600
    for pack in (shop.repository / "data").rglob("*"):
        os.utime(pack, (when, when))

    killed = shop.run("forget", first, env={"CAPSULE_FAULTS": "forget:recorded"})
    assert killed.returncode == -signal.SIGKILL
    assert (shop.repository / "snapshots" / first).exists(), "killed after the manifest was deleted"
    shop.run("unlock", expect=0)  # the killed process's lock
    before = on_disk(shop.repository)

    done = json_of(shop, "prune")

    assert not (shop.repository / "snapshots" / first).exists()
    assert done["bytes_freed"] > 2 * 1024 * 1024 and on_disk(shop.repository) == done["bytes_after"] < before
    assert json_of(shop, "verify", "--read-data")["ok"] is True


def test_the_repack_threshold_is_the_setting(shop: Shop) -> None:
    assert json_of(shop, "prune", "--dry-run")["repack_unused_percent"] == 10
    shop.run("settings", "set", "retention.repack-unused-percent", "35", expect=0)
    assert json_of(shop, "prune", "--dry-run")["repack_unused_percent"] == 35
    refused = shop.run("settings", "set", "retention.repack-unused-percent", "101")
    assert refused.returncode != 0 and "retention.repack-unused-percent" in one_line_error(refused)
