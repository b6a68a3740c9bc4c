"""Automatic upload as steps of every backup job: a real repository, a real event log, folder
destinations on disk; what each destination holds is the `backup_dest_objects` read model."""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from capsule.adapters.repository.backends import open_backend
from capsule.api import render
from capsule.domain.backup_job import upload_step
from capsule.orchestrator import projections, uploads
from capsule.orchestrator.destinations import load
from capsule.orchestrator.eventstore import EventStore
from capsule.orchestrator.projections.tables import backup_dest_objects
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.secrets import box_in
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.uploads import LoggedSessions, Recorder
from capsule.orchestrator.usecases.backup import Backup, back_up
from capsule.orchestrator.usecases.destinations import add_folder, set_enabled
from capsule.orchestrator.usecases.forget import ForgetByHand, forget_snapshots
from capsule.orchestrator.usecases.jobs import current_status
from capsule.orchestrator.usecases.logcopy import generations
from capsule.orchestrator.usecases.prune import Prune, run_prune
from capsule.orchestrator.usecases.sync import Sync, sync
from capsule.orchestrator.usecases.verify import Verify, verify_repository
from tests.integration.helpers import Shop, in_process_settings
from tests.integration.test_prune_job import age_packs, write_images
from tests.integration.test_sync import objects


def folder(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def dest_rows(shop: Shop) -> list[dict[str, object]]:
    runtime = Runtime(in_process_settings(shop))
    try:
        with runtime.engine.connect() as conn:
            t = backup_dest_objects
            rows = conn.execute(select(t).order_by(t.c.object_key)).mappings()
            return [{k: v for k, v in r.items() if k != "last_position"} for r in rows]
    finally:
        runtime.close()


def upload_results(shop: Shop, job_id: str) -> dict[str, dict[str, object]]:
    runtime = Runtime(in_process_settings(shop))
    try:
        state = runtime.load("backup", job_id).state
        return {s.name: dict(s.result or {}) for s in state.steps if s.name.startswith("upload:")}
    finally:
        runtime.close()


def test_a_backup_uploads_to_every_enabled_destination_and_the_next_sends_only_new_objects(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    nas, usb, off = folder(tmp_path, "nas"), folder(tmp_path, "usb"), folder(tmp_path, "off")
    add_folder(settings, "nas", nas)
    add_folder(settings, "usb", usb)
    add_folder(settings, "off", off)
    set_enabled(settings, "off", False)

    first = back_up(settings, Backup(kind="database"))
    sent_first = upload_results(shop, first.job_id)
    second = back_up(settings, Backup(kind="database"))
    sent_second = upload_results(shop, second.job_id)

    local = open_backend(shop.repository)
    assert set(sent_first) == {upload_step("nas"), upload_step("usb")}  # not the one turned off
    assert objects(open_backend(nas)) == objects(local) == objects(open_backend(usb))
    assert list(off.iterdir()) == []
    first_nas = sent_first[upload_step("nas")]
    assert first_nas["status"] == "uploaded" and int(first_nas["sent"]) > 0  # type: ignore[call-overload]
    second_nas = sent_second[upload_step("nas")]
    # Only the new snapshot (and the packs and index it needed) went: nothing sent before went again.
    assert 0 < int(second_nas["sent"]) < int(first_nas["sent"])  # type: ignore[call-overload]
    assert int(second_nas["skipped"]) == int(first_nas["sent"])  # type: ignore[call-overload]
    rows = dest_rows(shop)
    held = {(r["destination"], r["kind"], r["name"]) for r in rows if r["deleted_at"] is None}
    assert {(k, n) for d, k, n in held if d == "nas"} == set(objects(local))
    assert {r["origin"] for r in rows} == {"sent"}


def test_replaying_the_log_rebuilds_what_each_destination_holds(shop: Shop, tmp_path: Path) -> None:
    settings = in_process_settings(shop)
    add_folder(settings, "nas", folder(tmp_path, "nas"))
    back_up(settings, Backup(kind="database"))
    before = dest_rows(shop)

    runtime = Runtime(settings)
    try:
        projections.replay(runtime.engine, runtime.store, workers=1)
    finally:
        runtime.close()

    assert before and dest_rows(shop) == before


def test_a_destination_that_fails_leaves_the_backup_completed_and_says_why(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    nas = folder(tmp_path, "nas")
    add_folder(settings, "nas", nas)
    add_folder(settings, "usb", folder(tmp_path, "usb"))
    nas.rmdir()  # the share is not mounted

    done = back_up(settings, Backup(kind="database"))

    results = upload_results(shop, done.job_id)
    assert len(done.snapshots) == 1  # stored and committed: the job completed
    assert results[upload_step("nas")]["status"] == "failed"
    assert "does not exist" in str(results[upload_step("nas")]["error"])
    assert results[upload_step("usb")]["status"] == "uploaded"
    lines = [p.line for p in current_status(settings).problems]
    assert any(line.startswith("nas: behind: its last upload failed") for line in lines), lines
    nas.mkdir()  # mounted again: the next backup catches up, and status is quiet
    back_up(settings, Backup(kind="database"))
    assert not [p for p in current_status(settings).problems if p.subject == "nas"]
    assert objects(open_backend(nas)) == objects(open_backend(shop.repository))


def test_sync_records_what_a_destination_already_holds_and_sends_only_what_it_lacks(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop)
    back_up(settings, Backup(kind="database"))
    nas = folder(tmp_path, "nas")
    shutil.copytree(shop.repository, nas, dirs_exist_ok=True)  # a copy made by hand, before Capsule knew
    add_folder(settings, "nas", nas)
    back_up(settings, Backup(kind="database"))

    [result] = sync(settings, Sync("nas")).destinations

    rows = dest_rows(shop)
    assert result.ok and result.sent == 0
    assert objects(open_backend(nas)) == objects(open_backend(shop.repository))
    found = {(r["kind"], r["name"]) for r in rows if r["origin"] == "found"}
    assert ("config", "config") in found  # recorded as found: never Capsule's to delete
    assert load(settings).get("nas").added_id


@pytest.mark.slow
def test_forget_and_prune_reach_the_destination_and_only_capsules_own_pruned_objects_go(
    shop: Shop, tmp_path: Path
) -> None:
    settings = in_process_settings(shop, uploads=shop.root / "uploads", pack_size=1024 * 1024)
    nas = folder(tmp_path, "nas")
    add_folder(settings, "nas", nas)
    rng = random.Random(7)
    write_images(settings.uploads, range(12), rng)
    first = back_up(settings, Backup(kind="files")).snapshots[0].snapshot_id
    for n in range(2, 12):
        (settings.uploads / f"img-{n:03}.jpg").unlink()
    kept = back_up(settings, Backup(kind="files")).snapshots[0].snapshot_id
    forget_snapshots(settings, ForgetByHand((first,)))
    age_packs(settings.repository)
    pruned = run_prune(settings, Prune())
    # A pack lost from the local disk (not pruned) must stay on the destination: it may be the only copy.
    local = open_backend(settings.repository)
    lost_by_disk = sorted(set(local.list("data")) & set(open_backend(nas).list("data")))[0]
    lost_bytes = local.read("data", lost_by_disk)
    local.remove("data", lost_by_disk)
    stranger = nas / "data" / "00" / ("00" * 32)  # not Capsule's: never deleted
    stranger.parent.mkdir(parents=True, exist_ok=True)
    stranger.write_bytes(b"someone else's")

    [synced] = sync(settings, Sync("nas")).destinations

    remote = open_backend(nas)
    assert pruned.packs_deleted > 0 and synced.ok
    assert synced.deleted == pruned.packs_deleted + 1 + len(pruned_index_files(settings))
    assert first not in set(remote.list("snapshots")) and kept in set(remote.list("snapshots"))
    assert lost_by_disk in set(remote.list("data")) and stranger.exists()
    local.write("data", lost_by_disk, lost_bytes)
    stranger.unlink()
    assert set(remote.list("data")) == set(local.list("data"))
    assert verify_repository(settings, Verify(read_data=True, source="nas")).ok


def pruned_index_files(settings: Settings) -> set[tuple[str, str]]:
    from capsule.orchestrator.uploads import deleted_locally

    runtime = Runtime(settings)
    try:
        return {key for key in deleted_locally(runtime) if key[0] == "index"}
    finally:
        runtime.close()


def test_a_backup_that_only_uploads_no_longer_holds_the_next_backup_of_its_source_back(
    shop: Shop, tmp_path: Path
) -> None:
    from capsule.domain.commands import CompleteStep, StartStep

    settings = in_process_settings(shop)
    add_folder(settings, "nas", folder(tmp_path, "nas"))
    runtime = Runtime(settings)
    try:
        source = str(shop.database)
        first = runtime.request_backup(source=source, actor="test")

        def run(step: str, result: dict[str, object]) -> None:
            start = StartStep(
                job_id=first, now=runtime.clock(), step=step, attempt=1, worker="w-test", lease=runtime.lease
            )
            runtime.execute("backup", first, lambda _: start, actor="test")
            done = CompleteStep(job_id=first, now=runtime.clock(), step=step, attempt=1, result=result)  # type: ignore[arg-type]
            runtime.execute("backup", first, lambda _: done, actor="test")

        behind = runtime.request_backup(source=source, actor="test")
        held_while_storing = runtime.release_queued(source)
        run("store", {})
        run("commit", {"snapshot_id": "ab" * 32})

        assert held_while_storing == [] and runtime.load("backup", behind).state.status == "queued"
        assert runtime.release_queued(source) == [behind]  # the first one only uploads now
        assert runtime.load("backup", behind).state.status == "pending"
    finally:
        runtime.close()


def test_a_paused_destination_is_left_out_of_backups_until_its_pause_runs_out(
    shop: Shop, tmp_path: Path
) -> None:
    from datetime import timedelta

    from capsule.orchestrator.usecases.destinations import record_paused

    settings = in_process_settings(shop)
    add_folder(settings, "nas", folder(tmp_path, "nas"))
    add_folder(settings, "usb", folder(tmp_path, "usb"))
    runtime = Runtime(settings)
    try:
        now = runtime.clock()
        record_paused(
            settings, "nas", now + timedelta(hours=6), "it kept refusing uploads for its rate limit"
        )
        during = runtime.request_backup(source="a.db", actor="test")
        runtime.clock = lambda: now + timedelta(hours=6, seconds=1)
        after = runtime.request_backup(source="b.db", actor="test")

        assert runtime.load("backup", during).state.destinations == ("usb",)
        assert runtime.load("backup", after).state.destinations == ("nas", "usb")
    finally:
        runtime.close()


@pytest.mark.slow
def test_an_upload_waits_for_an_earlier_backups_upload_to_the_same_destination(
    shop: Shop, tmp_path: Path
) -> None:
    import threading
    import time

    from capsule.domain.commands import CompleteStep, StartStep

    settings = in_process_settings(shop, step_lease_seconds=120)  # the held upload outlives the test
    add_folder(settings, "nas", folder(tmp_path, "nas"))
    runtime = Runtime(settings)
    try:
        earlier = runtime.request_backup(source=str(shop.database.resolve()), actor="test")

        def start(step: str) -> None:
            command = StartStep(
                job_id=earlier,
                now=runtime.clock(),
                step=step,
                attempt=1,
                worker="w-test",
                lease=runtime.lease,
            )
            runtime.execute("backup", earlier, lambda _: command, actor="test")

        def complete(step: str, result: dict[str, object]) -> None:
            command = CompleteStep(job_id=earlier, now=runtime.clock(), step=step, attempt=1, result=result)  # type: ignore[arg-type]
            runtime.execute("backup", earlier, lambda _: command, actor="test")

        for step, result in (("store", {}), ("commit", {"snapshot_id": "ab" * 32})):
            start(step)
            complete(step, result)
        start(upload_step("nas"))  # held by a worker that has not finished it
        done: list[str] = []
        later = threading.Thread(target=lambda: done.append(back_up(settings, Backup()).job_id))
        later.start()
        while not any(
            r["current_step"] == upload_step("nas") and r["job_id"] != earlier for r in running(runtime)
        ):
            time.sleep(0.1)
        time.sleep(3)  # time enough to finish an upload that did not wait
        complete(upload_step("nas"), {"status": "uploaded"})
        later.join(timeout=120)

        positions = {
            job: next(
                e.position
                for e in runtime.store.read_stream(f"backup-{job}")
                if e.type == "StepCompleted" and e.data["step"] == upload_step("nas")
            )
            for job in (earlier, *done)
        }
        assert done and positions[done[0]] > positions[earlier]
        assert upload_results(shop, done[0])[upload_step("nas")]["status"] == "uploaded"
    finally:
        runtime.close()


def running(runtime: Runtime) -> list[dict[str, object]]:
    return projections.list_jobs(runtime.engine, status="running", job_type="backup")


def test_a_backups_upload_leaves_a_copy_of_the_event_log_at_most_every_few_hours(
    shop: Shop, tmp_path: Path
) -> None:
    # The copy must be recoverable without anyone running `capsule sync`: the upload step puts a
    # copy of the event log there too, but not after every hourly backup (the whole log is sealed).
    settings = in_process_settings(shop)
    nas = folder(tmp_path, "nas")
    add_folder(settings, "nas", nas)

    first = back_up(settings, Backup(kind="database"))
    after_first = generations(open_backend(nas))
    second = back_up(settings, Backup(kind="database"))

    assert len(after_first) == 1
    assert upload_results(shop, first.job_id)[upload_step("nas")]["event_log"] == after_first[0]
    assert generations(open_backend(nas)) == after_first  # an hour later: not again
    assert "event_log" not in upload_results(shop, second.job_id)[upload_step("nas")]


def test_open_upload_sessions_are_read_from_the_end_of_a_long_destination_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every pack sent to Drive opens and closes a session in the destination's stream: a year of
    # hourly copies is tens of thousands of events. A session still worth resuming was opened after
    # the last copy that left the destination holding everything; only that end is read.
    settings = Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")
    add_folder(settings, "usb", str(folder(tmp_path, "usb")))
    destination = load(settings).by_name["usb"]
    runtime = Runtime(settings)
    try:
        box = box_in(settings.home)
        recorder = Recorder(runtime, destination, "job-1", "system:upload")
        sessions = LoggedSessions(recorder, box)
        for i in range(150):
            sessions.save("data", f"{i:064x}", f"https://upload.example/{i}", 10)
            sessions.clear("data", f"{i:064x}")
        sessions.save("data", "e" * 64, "https://upload.example/stale", 10)  # the copy then completed
        recorder.flush(done=True)
        sessions.save("data", "f" * 64, "https://upload.example/open", 10)  # cut off after it

        decoded: list[str] = []
        stored = EventStore._stored
        monkeypatch.setattr(
            EventStore, "_stored", lambda self, row: decoded.append(row.type) or stored(self, row)
        )
        again = LoggedSessions(Recorder(runtime, destination, "job-2", "system:upload"), box)

        assert again.load("data", "f" * 64) == "https://upload.example/open"
        assert again.load("data", "e" * 64) is None  # its object is there: nothing to resume
        assert again.load("data", f"{7:064x}") is None
        assert len(decoded) < 100, len(decoded)
    finally:
        runtime.close()


def test_status_says_where_the_copies_are_and_when_the_last_whole_one_was_made(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A backup on the disk of the shop's server burns with it: status says so while no copy is kept
    # elsewhere, and else where each copy is and when it last held everything.
    settings = in_process_settings(shop)
    alone = current_status(settings)
    render.status(alone, as_json=False)
    said = capsys.readouterr().out
    assert alone.offsite == []
    assert "Off-site copies: none: the backups are only on this machine" in said
    assert "capsule destinations add folder NAME PATH" in said

    usb = folder(tmp_path, "usb")
    add_folder(settings, "usb", usb)
    add_folder(settings, "nas", folder(tmp_path, "nas"))
    set_enabled(settings, "nas", False)
    before = datetime.now(UTC) - timedelta(seconds=1)
    back_up(settings, Backup(kind="database"))
    status = current_status(settings)
    render.status(status, as_json=False)
    said = capsys.readouterr().out
    render.status(status, as_json=True)
    doc = json.loads(capsys.readouterr().out)

    copies = {c.name: c for c in status.offsite}
    assert copies["usb"].enabled and copies["usb"].last_whole_copy_at is not None
    assert copies["usb"].last_whole_copy_at >= before
    assert not copies["nas"].enabled and copies["nas"].last_whole_copy_at is None
    assert f"Off-site copy usb (folder {usb}): last held everything " in said
    assert "Off-site copy nas" in said and "disabled" in said
    assert "Off-site copies: none" not in said
    assert [c["name"] for c in doc["offsite"]] == ["usb", "nas"]
    assert doc["offsite"][0]["kind"] == "folder" and doc["offsite"][0]["location"] == str(usb)


def test_an_upload_with_nothing_deleted_locally_looks_through_no_prune(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which objects a prune or a forget deleted is read from every prune job the log holds: a year of
    # daily prunes is hundreds of jobs, read again at every hourly upload. It is needed only when an
    # object Capsule sent there is missing from the local repository.
    settings = in_process_settings(shop)
    usb = folder(tmp_path, "usb")
    add_folder(settings, "usb", usb)
    back_up(settings, Backup(kind="database"))
    looked: list[int] = []
    real = uploads.deleted_locally
    monkeypatch.setattr(uploads, "deleted_locally", lambda runtime: looked.append(1) or real(runtime))

    back_up(settings, Backup(kind="database"))
    assert looked == []

    older = shop.snapshots()[-1]["snapshot_id"]
    forget_snapshots(settings, ForgetByHand((older,)))
    sync(settings, Sync())
    assert looked == [1]  # a snapshot file sent there is gone here: the prunes and forgets say why
    assert older not in set(open_backend(usb).list("snapshots"))
