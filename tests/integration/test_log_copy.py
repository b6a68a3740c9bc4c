"""The encrypted copy of the event log on a destination: written by sync when the log moved, two
generations kept, read back whole with the repository key, a tampered copy refused by name; and
the recovery that reads it, with what it refuses."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.backends.memory import MemoryBackend
from capsule.api.render_recover import recovered
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.usecases.backup import Backup, back_up, backup_source
from capsule.orchestrator.usecases.destinations import add_folder
from capsule.orchestrator.usecases.jobs import verify_log
from capsule.orchestrator.usecases.logcopy import (
    KIND,
    NoLogCopy,
    copy_event_log,
    generations,
    newest_log_copy,
)
from capsule.orchestrator.usecases.recover import Recover, RecoverRefused, recover
from capsule.orchestrator.usecases.repository import open_repository
from capsule.orchestrator.usecases.sync import Sync, sync
from tests.integration.helpers import Shop, in_process_settings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def test_a_copy_is_written_only_when_the_log_moved_and_two_generations_are_kept(shop: Shop) -> None:
    settings = in_process_settings(shop)
    destination, clock = MemoryBackend(), Clock()
    back_up(settings, Backup(kind="database"))

    first = copy_event_log(settings, destination, clock=clock)
    again = copy_event_log(settings, destination, clock=clock)
    back_up(settings, Backup(kind="database"))
    second = copy_event_log(settings, destination, clock=clock)
    back_up(settings, Backup(kind="database"))
    third = copy_event_log(settings, destination, clock=clock)

    assert first.written and first.events > 0 and first.stored_bytes > 0
    assert (again.written, again.name, again.removed) == (False, first.name, ())
    assert second.written and second.events > first.events and second.removed == ()
    assert third.written and third.removed == (first.name,)
    assert generations(destination) == [third.name, second.name]
    destination.write(KIND, "notes", b"kept: not a name Capsule writes")
    copy_event_log(settings, destination, clock=clock)
    assert "notes" in set(destination.list(KIND))


def test_the_newest_copy_reads_back_every_event_and_a_tampered_one_is_refused_by_name(shop: Shop) -> None:
    settings = in_process_settings(shop)
    destination, clock = MemoryBackend(), Clock()
    back_up(settings, Backup(kind="database"))
    older = copy_event_log(settings, destination, clock=clock)
    back_up(settings, Backup(kind="database"))
    newer = copy_event_log(settings, destination, clock=clock)
    repo = open_repository(settings)

    found = newest_log_copy(repo, destination)
    assert found.name == newer.name and found.refused == ()
    assert len(found.parsed.export.rows) == newer.events
    assert [r["position"] for r in found.parsed.export.rows] == sorted(
        r["position"] for r in found.parsed.export.rows
    )
    assert b"BackupCompleted" not in destination.read(KIND, newer.name)  # sealed, not readable

    stored = bytearray(destination.read(KIND, newer.name))
    stored[40] ^= 1
    destination.write(KIND, newer.name, bytes(stored))
    fallback = newest_log_copy(repo, destination)
    assert fallback.name == older.name
    [(name, reason)] = fallback.refused
    assert name == newer.name and "failed authentication" in reason and newer.name in reason

    # A generation passed off under another's name does not open either.
    destination.write(KIND, newer.name, destination.read(KIND, older.name))
    destination.remove(KIND, older.name)
    with pytest.raises(NoLogCopy, match=f"the event log copy {newer.name} .* failed authentication"):
        newest_log_copy(repo, destination)


def test_sync_leaves_a_copy_of_the_log_on_each_destination_and_a_second_sync_writes_none(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    back_up(settings, Backup(kind="database"))
    folder = tmp_path / "nas"
    folder.mkdir()
    add_folder(settings, "nas", str(folder))

    [first] = sync(settings, Sync()).destinations
    [second] = sync(settings, Sync()).destinations

    assert first.ok and first.event_log_written and first.event_log is not None
    assert (second.ok, second.event_log_written, second.event_log) == (True, False, first.event_log)
    assert generations(open_backend(folder)) == [first.event_log]
    assert (folder / "eventlog" / first.event_log).is_file()


def synced_copy(shop: Shop, tmp_path: Path) -> Path:
    settings = in_process_settings(shop)
    back_up(settings, Backup(kind="database"))
    folder = tmp_path / "usb"
    folder.mkdir()
    add_folder(settings, "usb", str(folder))
    assert sync(settings, Sync()).destinations[0].event_log_written
    return folder


def test_recover_refuses_a_home_with_a_log_of_its_own_and_a_repository_folder_with_files(
    shop: Shop, tmp_path: Path
) -> None:
    copy = synced_copy(shop, tmp_path)
    with pytest.raises(RecoverRefused, match=r"already holds \d+ events of its own .* new Capsule home"):
        recover(in_process_settings(shop), Recover(str(copy)))

    new = Shop(tmp_path / "new")
    new.home.mkdir(parents=True)
    shutil.copy2(shop.key_file, new.key_file)
    new.repository.mkdir(parents=True)
    (new.repository / "notes.txt").write_text("mine")
    with pytest.raises(RecoverRefused, match=f"{new.repository} is not an empty folder"):
        recover(in_process_settings(new), Recover(str(copy)))
    assert (new.repository / "notes.txt").read_text() == "mine"
    assert not (new.home / "events.db").exists()


def test_a_recovery_into_a_new_home_gives_the_same_log_and_a_copy_without_a_log_is_refused(
    shop: Shop, tmp_path: Path
) -> None:
    copy = synced_copy(shop, tmp_path)
    new = Shop(tmp_path / "new")
    new.home.mkdir(parents=True)
    shutil.copy2(shop.key_file, new.key_file)
    for name in generations(open_backend(copy)):
        (copy / KIND / name).rename(tmp_path / name)

    with pytest.raises(NoLogCopy, match="holds no copy of the event log"):
        recover(in_process_settings(new), Recover(str(copy)))
    assert not new.repository.exists()  # refused before anything was copied

    for moved in tmp_path.glob("2*z-*"):
        moved.rename(copy / KIND / moved.name)
    done = recover(in_process_settings(new), Recover(str(copy)))
    old, recovered = verify_log(in_process_settings(shop)), verify_log(in_process_settings(new))
    assert (done.head_position, done.events) == (old.head_position, old.events)
    assert recovered.events == old.events + 1  # RepositoryRecovered follows the restored events


def test_jobs_the_old_machine_had_not_finished_are_cancelled_not_resumed_on_the_new_one(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy of the log taken while a job ran (an upload step copies the log in the middle of its
    # backup) must not make the new machine carry on the old one's work: an in-place restore of
    # the old machine's database path, say. Recovery cancels them, in the audit history.
    settings = in_process_settings(shop)
    back_up(settings, Backup(kind="database"))
    runtime = Runtime(settings)
    try:
        pending = runtime.request_backup(source=backup_source(settings, "database"), actor="person:owner")
    finally:
        runtime.close()
    copy = tmp_path / "usb"
    copy.mkdir()
    add_folder(settings, "usb", str(copy))
    assert sync(settings, Sync()).destinations[0].event_log_written
    new = Shop(tmp_path / "new")
    new.home.mkdir(parents=True)
    shutil.copy2(shop.key_file, new.key_file)

    done = recover(in_process_settings(new), Recover(str(copy)))

    assert done.cancelled_jobs == (pending,)
    [closed] = done.cancelled
    assert (closed.saved_snapshots, closed.uploads_left) == ((), ())  # nothing of it was saved
    recovered(done, as_json=False)
    assert f"Job {pending} (backup) had not finished on the old machine" in capsys.readouterr().out
    runtime = Runtime(in_process_settings(new))
    try:
        assert runtime.unfinished() == []
        assert runtime.load("backup", pending).state.status == "cancelled"
    finally:
        runtime.close()


def test_a_backup_cut_off_while_uploading_is_recovered_as_saved_not_as_lost_work(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The usual copy of the log is the one a backup's own upload step leaves: the job is then still
    # running in that copy. On the new machine it is closed, and the recovery says its snapshots
    # were saved and what was left (the uploads), not that work was lost.
    settings = in_process_settings(shop)
    copy = tmp_path / "usb"
    copy.mkdir()
    add_folder(settings, "usb", str(copy))
    done_there = back_up(settings, Backup(kind="database"))
    new = Shop(tmp_path / "new")
    new.home.mkdir(parents=True)
    shutil.copy2(shop.key_file, new.key_file)

    done = recover(in_process_settings(new), Recover(str(copy)))

    [closed] = done.cancelled
    assert closed.job_id == done.cancelled_jobs[0] and closed.job_type == "backup"
    [saved] = done_there.snapshots
    assert closed.saved_snapshots == (saved.snapshot_id,)
    assert closed.uploads_left == ("usb",) and closed.step == "upload:usb"
    recovered(done, as_json=False)
    said = capsys.readouterr().out
    assert f"its snapshot {saved.snapshot_id[:12]} was saved" in said
    assert "had not finished" not in said
