"""Backing up and restoring the product images with the real `capsule` command.

The shop's images folder is CAPSULE_UPLOADS; every command runs in a child process as a shop owner
would run it, with the fixtures and helpers of the other end-to-end tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import CAPSULE, Shop, describe, one_line_error, unreadable_runner
from tests.integration.uploads import describe_tree, make_uploads

PROJECT = Path(__file__).resolve().parents[2]


def files_env(shop: Shop) -> dict[str, str]:
    return {"CAPSULE_UPLOADS": str(shop.root / "uploads")}


def backup_json(shop: Shop, *args: str) -> dict[str, Any]:
    proc = shop.run("backup", "--json", *args, env=files_env(shop), expect=0)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def restore(
    shop: Shop, ref: str, to: Path, *extra: str, expect: int | None = 0
) -> subprocess.CompletedProcess[str]:
    """`capsule restore REF --to DIR` in the shop whose images are CAPSULE_UPLOADS: what `latest-*` means."""
    return shop.run("restore", ref, "--to", str(to), *extra, env=files_env(shop), expect=expect)


@pytest.fixture
def uploads(shop: Shop) -> Path:
    folder = shop.root / "uploads"
    make_uploads(folder)
    return folder


def test_a_files_backup_restores_an_identical_tree(shop: Shop, uploads: Path, tmp_path: Path) -> None:
    result = backup_json(shop, "--kind", "files")
    assert result["kind"] == "files"
    assert result["source"] == str(uploads.resolve())
    assert (result["totals"]["files"], result["totals"]["warnings"]) == (6, 0)
    assert "tree" not in result and "entries" not in result
    expected = describe_tree(uploads)

    out = tmp_path / "restored"
    proc = shop.restore(result["snapshot_id"][:10], out)

    assert describe_tree(out) == expected
    assert "Restored 6 files" in proc.stdout
    assert "2 links" in proc.stdout


def test_a_backup_of_all_takes_the_database_and_the_images_in_one_job(
    shop: Shop, uploads: Path, tmp_path: Path
) -> None:
    result = backup_json(shop, "--kind", "all")
    database, files = result["snapshots"]
    assert (database["kind"], files["kind"]) == ("database", "files")
    assert database["job_id"] == files["job_id"] == result["job_id"]
    assert database["source"] == str(shop.database.resolve())
    assert files["source"] == str(uploads.resolve())

    listed = {s["snapshot_id"]: s["kind"] for s in shop.snapshots()}
    assert listed == {database["snapshot_id"]: "database", files["snapshot_id"]: "files"}
    [job] = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    assert (job["job_id"], job["kind"], job["status"]) == (result["job_id"], "all", "completed")
    assert job["snapshot_id"] == database["snapshot_id"]

    restore(shop, "latest-database", tmp_path / "db")
    check = subprocess.run(
        [sys.executable, "-m", "benchmarks.posdb", "check", str(tmp_path / "db" / shop.db_name)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["consistent"] is True
    restore(shop, "latest-files", tmp_path / "images")
    assert describe_tree(tmp_path / "images") == describe_tree(uploads)


def test_warnings_show_in_the_backup_jobs_and_audit(shop: Shop, uploads: Path) -> None:
    os.mkfifo(uploads / "cat1" / "pipe")
    item = "cat1/pipe: skipped: it is a named pipe (FIFO), which a backup cannot hold"

    proc = shop.run("backup", "--kind", "files", env=files_env(shop), expect=3)
    assert "1 item(s) not backed up as they are:" in proc.stderr
    assert item in proc.stderr
    assert proc.stdout.startswith("Snapshot ")

    [job] = json.loads(shop.run("jobs", "--json", expect=0).stdout)
    assert (job["status"], job["warnings"]) == ("completed", {"count": 1, "items": [item]})
    listing = shop.run("jobs", expect=0).stdout
    assert "1 warning(s)" in listing
    assert f"! {item}" in listing

    table = shop.run("audit", "--job", job["job_id"], expect=0).stdout
    assert f"1 warning(s): {item}" in table
    events = json.loads(shop.run("audit", "--job", job["job_id"], "--json", expect=0).stdout)
    [store] = [e for e in events if e["type"] == "StepCompleted" and e["data"]["step"] == "store"]
    assert store["data"]["result"]["warnings"] == {"count": 1, "items": [item]}


def test_include_restores_only_what_matches_and_cat_writes_one_file(
    shop: Shop, uploads: Path, tmp_path: Path
) -> None:
    backup_json(shop, "--kind", "files")

    out = tmp_path / "some"
    restore(shop, "latest-files", out, "--include", "cat1/*.jpg")
    assert describe_tree(out) == {
        k: v for k, v in describe_tree(uploads).items() if k in ("cat1", "cat1/red.jpg", "cat1/blue.jpg")
    }
    nothing = restore(shop, "latest-files", tmp_path / "none", "--include", "shoes/*.jpg", expect=1)
    assert "--include 'shoes/*.jpg'" in one_line_error(nothing)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())

    got = tmp_path / "blue.jpg"
    assert shop.cat("latest-files", "cat1/blue.jpg", got, files_env(shop)).returncode == 0
    assert got.read_bytes() == (uploads / "cat1" / "blue.jpg").read_bytes()
    missing = shop.cat("latest-files", "cat1/missing.jpg", tmp_path / "missing", files_env(shop))
    assert missing.returncode == 1
    assert "there is no 'cat1/missing.jpg' in snapshot " in missing.stderr
    assert (tmp_path / "missing").read_bytes() == b""
    folder = shop.cat("latest-files", "cat2", tmp_path / "folder", files_env(shop))
    assert folder.returncode == 1
    assert "'cat2' is a folder, not a file" in folder.stderr


def test_restoring_again_leaves_equal_files_and_refuses_to_overwrite_others_without_force(
    shop: Shop, uploads: Path, tmp_path: Path
) -> None:
    backup_json(shop, "--kind", "files")
    expected = describe_tree(uploads)
    out = tmp_path / "restored"
    restore(shop, "latest-files", out)
    inode = os.stat(out / "cat1" / "red.jpg").st_ino

    again = restore(shop, "latest-files", out)
    assert "already there" in again.stdout
    assert describe_tree(out) == expected
    assert os.stat(out / "cat1" / "red.jpg").st_ino == inode  # left alone, not written again

    (out / "cat1" / "blue.jpg").write_bytes(b"edited since")
    (out / "tools" / "resize.sh").unlink()
    refused = restore(shop, "latest-files", out, expect=1)
    message = one_line_error(refused)
    assert "cat1/blue.jpg already exists" in message and "--force" in message
    assert (out / "cat1" / "blue.jpg").read_bytes() == b"edited since"
    assert not (out / "tools" / "resize.sh").exists()  # nothing was written

    restore(shop, "latest-files", out, "--force")
    assert describe_tree(out) == expected


def test_a_files_backup_without_the_uploads_folder_says_to_set_it(shop: Shop) -> None:
    proc = shop.run("backup", "--kind", "files", env=files_env(shop), expect=1)
    message = one_line_error(proc)
    assert "CAPSULE_UPLOADS" in message
    assert str(shop.root / "uploads") in message
    assert shop.snapshots() == []


def ls_json(shop: Shop, *args: str) -> dict[str, Any]:
    listing: dict[str, Any] = json.loads(
        shop.run("ls", *args, "--json", env=files_env(shop), expect=0).stdout
    )
    return listing


@pytest.mark.slow
def test_ls_lists_a_folder_of_a_snapshot_as_ls_does(shop: Shop, uploads: Path) -> None:
    sid = backup_json(shop, "--kind", "files")["snapshot_id"]
    shop.backup()

    top = ls_json(shop, "latest-files")
    assert top["snapshot_id"] == sid and top["path"] == ""
    names = [e["name"] for e in top["entries"]]
    assert names == sorted(names) and {"cat1", "cat2", "empty-folder", "featured.jpg", "tools"} <= set(names)
    cat1 = ls_json(shop, sid[:8], "cat1/")
    assert [(e["name"], e["type"], e["size"], e["mode"]) for e in cat1["entries"]] == [
        ("blue.jpg", "file", (uploads / "cat1" / "blue.jpg").stat().st_size, "0600"),
        ("notes.txt", "file", 900, "0640"),
        ("red.jpg", "file", (uploads / "cat1" / "red.jpg").stat().st_size, "0644"),
    ]
    one = ls_json(shop, "latest-files", str(uploads.resolve() / "tools" / "resize.sh"))
    assert [(e["path"], e["mode"]) for e in one["entries"]] == [("tools/resize.sh", "0755")]

    text = shop.run("ls", "latest-files", env=files_env(shop), expect=0).stdout
    assert text.startswith(f"Snapshot {sid[:12]} of {uploads.resolve()}")
    assert any(line.startswith("drwxr-x---") and line.endswith("  cat2/") for line in text.splitlines())
    assert any(line.endswith("  featured.jpg -> cat1/red.jpg") for line in text.splitlines())

    database = ls_json(shop, "latest-database")
    assert [(e["name"], e["type"], e["size"]) for e in database["entries"]] == [
        (shop.db_name, "file", shop.database.stat().st_size)
    ]


@pytest.mark.slow
def test_ls_and_cat_of_an_unknown_path_suggest_real_neighbours(
    shop: Shop, uploads: Path, tmp_path: Path
) -> None:
    sid = backup_json(shop, "--kind", "files")["snapshot_id"]

    typo = shop.run("ls", "latest-files", "cat1/bleu.jpg", env=files_env(shop), expect=1)
    assert one_line_error(typo).startswith(
        f"capsule: there is no 'cat1/bleu.jpg' in snapshot {sid[:12]}; did you mean 'cat1/blue.jpg'"
    )
    elsewhere = shop.cat("latest-files", "green.png", tmp_path / "green", files_env(shop))
    assert elsewhere.returncode == 1
    assert "did you mean 'cat2/deep/green.png'?" in elsewhere.stderr
    nowhere = shop.cat("latest-files", "cat2/deep/zzzz/qqqq.gif", tmp_path / "none", files_env(shop))
    assert nowhere.returncode == 1
    assert f"`capsule ls {sid[:12]} cat2/deep` lists what is there" in nowhere.stderr
    assert "`capsule find -i '*qqqq.gif*'` looks for the name" in nowhere.stderr
    assert "shoes" not in nowhere.stderr

    full = shop.cat(
        "latest-files", str(uploads.resolve() / "cat1" / "blue.jpg"), tmp_path / "b", files_env(shop)
    )
    assert full.returncode == 0, full.stderr
    assert (tmp_path / "b").read_bytes() == (uploads / "cat1" / "blue.jpg").read_bytes()

    wrong_ref = shop.run("ls", "latest-file", env=files_env(shop), expect=1)
    assert "did you mean 'latest-files'?" in one_line_error(wrong_ref)


@pytest.mark.slow
def test_find_names_every_snapshot_that_holds_a_lost_file(shop: Shop, uploads: Path) -> None:
    older = backup_json(shop, "--kind", "files")["snapshot_id"]
    red_size = (uploads / "cat1" / "red.jpg").stat().st_size
    (uploads / "cat1" / "red.jpg").unlink()
    newer = backup_json(shop, "--kind", "files")["snapshot_id"]

    def find(*args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(shop.run("find", *args, "--json", expect=0).stdout)
        return rows

    lost = find("red.jpg")
    assert [(r["snapshot_id"], r["path"], r["kind"]) for r in lost] == [(older, "cat1/red.jpg", "files")]
    assert lost[0]["source"] == str(uploads.resolve()) and lost[0]["size"] == red_size
    assert [r["snapshot_id"] for r in find("cat1/*.jpg")] == [newer, older, older]
    assert find("BLUE.JPG") == []
    assert [r["path"] for r in find("-i", "BLUE.JPG")] == ["cat1/blue.jpg", "cat1/blue.jpg"]
    assert [r["snapshot_id"] for r in find("--snapshot", older[:8], "*.jpg")] == [older] * 4
    assert find("*.db") == []

    text = shop.run("find", "*.jpg", expect=0).stdout.splitlines()
    assert text[0].split() == ["SNAPSHOT", "TIME", "SIZE", "PATH"]
    blue = [line for line in text if line.endswith("cat1/blue.jpg  (also in 1 older)")]
    assert len(blue) == 1 and blue[0].startswith(newer[:12])
    red = [line for line in text if line.endswith("/red.jpg")]
    assert len(red) == 1 and red[0].startswith(older[:12]) and red[0].endswith("cat1/red.jpg")
    assert "Nothing matches 'missing*' in 2 snapshots." in shop.run("find", "missing*", expect=0).stdout


def test_latest_after_a_backup_of_all_is_refused_naming_both_kinds(
    shop: Shop, uploads: Path, tmp_path: Path
) -> None:
    result = backup_json(shop, "--kind", "all")
    database, files = (s["snapshot_id"] for s in result["snapshots"])

    refused = restore(shop, "latest", tmp_path / "which", expect=1)

    message = one_line_error(refused)
    assert "latest-database" in message and "latest-files" in message
    assert database[:12] in message and files[:12] in message
    assert not (tmp_path / "which").exists()
    cat = shop.cat("latest", "cat1/blue.jpg", tmp_path / "blue.jpg", files_env(shop))
    assert cat.returncode == 1 and "latest-files" in one_line_error(cat)


def test_status_shows_the_last_snapshot_of_each_kind(shop: Shop, uploads: Path) -> None:
    first = backup_json(shop, "--kind", "all")
    database = shop.backup()

    status = json.loads(shop.run("status", "--json", env=files_env(shop), expect=0).stdout)
    last = status["last_snapshots"]
    assert last["database"]["snapshot_id"] == database["snapshot_id"]
    assert last["files"]["snapshot_id"] == first["snapshots"][1]["snapshot_id"]
    text = shop.run("status", env=files_env(shop), expect=0).stdout
    assert f"Last database snapshot: {database['snapshot_id'][:12]}" in text
    assert f"Last files snapshot: {first['snapshots'][1]['snapshot_id'][:12]}" in text


def test_a_backup_that_keeps_an_unreadable_image_from_the_previous_one_exits_3(
    shop: Shop, uploads: Path
) -> None:
    first = backup_json(shop, "--kind", "files")
    image = uploads / "cat1" / "red.jpg"
    image.write_bytes(image.read_bytes() + b"changed")
    prefix = unreadable_runner(image)
    try:
        proc = subprocess.run(
            [*prefix, *CAPSULE, "backup", "--kind", "files", "--json"],
            cwd=shop.root,
            env=shop.env(files_env(shop)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.chmod(image, 0o644)

    assert proc.returncode == 3, describe(proc)
    result = json.loads(proc.stdout)
    kept = (
        "cat1/red.jpg: it could not be read (Permission denied); the version from the previous backup is kept"
    )
    assert result["warnings"] == {"count": 1, "items": [kept]}
    assert result["parent"] == first["snapshot_id"]
    assert [s["snapshot_id"] for s in shop.snapshots()] == [first["snapshot_id"], result["snapshot_id"]]
    human = shop.run("backup", "--kind", "files", env=files_env(shop), expect=0)
    assert human.stdout.startswith("Snapshot ")
