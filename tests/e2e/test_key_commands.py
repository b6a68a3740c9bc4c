"""`capsule key`: the paper key typed back on a new machine, passphrase changes, adding, listing and
removing keys, and what each refuses."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.lock import KEYS, locked
from tests.integration.helpers import CAPSULE, Shop, describe, file_content_digest, one_line_error

OLD_PHRASE = "Cobalt-Ledger 5512 tinned-herring tills"
NEW_PHRASE = "Amber-Kiosk 9034 pickled-beet receipts"

pytestmark = pytest.mark.slow  # each runs several `capsule` processes


def run_with_input(
    shop: Shop, text: str, *args: str, env: Mapping[str, str | None] | None = None, expect: int | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CAPSULE, *args],
        cwd=shop.root,
        env=shop.env(env),
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stderr, describe(proc)
    if expect is not None:
        assert proc.returncode == expect, describe(proc)
    return proc


def key_lines(paper: str) -> list[str]:
    return [line for line in paper.splitlines() if line and not line.startswith("#")]


def new_machine(tmp_path: Path, with_repository_of: Shop | None) -> Shop:
    """A machine with no Capsule home yet; the repository copied from off-site when one is given."""
    machine = Shop(tmp_path / "new-machine")
    machine.root.mkdir(parents=True)
    if with_repository_of is not None:
        shutil.copytree(with_repository_of.repository, machine.repository)
    return machine


def keys_of(shop: Shop, env: Mapping[str, str | None] | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(shop.run("key", "list", "--json", env=env, expect=0).stdout)
    return rows


def test_a_paper_key_typed_on_a_new_machine_restores_the_backups(shop: Shop, tmp_path: Path) -> None:
    taken = shop.backup()["snapshot_id"]
    secret = json.loads(shop.key_file.read_text())["secret"]
    exported = shop.run("key", "export", "--paper", expect=0)
    assert "Anyone who has this key and a copy of the backups can read them" in exported.stdout
    lines = key_lines(exported.stdout)
    assert len(lines) == 6

    machine = new_machine(tmp_path, with_repository_of=shop)
    typo = lines[2][:5] + ("7" if lines[2][5] != "7" else "8") + lines[2][6:]
    wrong = run_with_input(machine, "\n".join([*lines[:2], typo, *lines[3:]]), "key", "import")
    assert "line 3 is wrong, most likely in its group 2" in one_line_error(wrong)
    assert not machine.key_file.exists()

    typed = "\n".join(line.lower().replace("-", " ") for line in lines)  # as a person types it
    imported = run_with_input(machine, typed, "key", "import", expect=0)
    assert "It opens the repository" in imported.stdout
    assert json.loads(machine.key_file.read_text())["secret"] == secret
    assert machine.key_file.stat().st_mode & 0o777 == 0o600
    assert [s["snapshot_id"] for s in machine.snapshots()] == [taken]
    machine.run("restore", taken, "--to", str(tmp_path / "restored"), expect=0)
    restored = tmp_path / "restored" / "pos.db"
    assert file_content_digest(restored, immutable=True) == file_content_digest(shop.database)
    for proc in (exported, wrong, imported):
        assert secret not in proc.stderr
    assert not any(lines[0] in proc.stderr for proc in (exported, wrong, imported))
    logs = [p for p in shop.home.rglob("*.log*") if p.is_file()]
    assert logs and all(secret not in p.read_text() and lines[0] not in p.read_text() for p in logs)
    logs = [p for p in machine.home.rglob("*.log*") if p.is_file()]
    assert logs and all(secret not in p.read_text() and lines[0] not in p.read_text() for p in logs)


def test_a_paper_key_typed_before_the_repository_arrives_is_checked_at_first_open(
    shop: Shop, tmp_path: Path
) -> None:
    lines = key_lines(shop.run("key", "export", "--paper", expect=0).stdout)
    machine = new_machine(tmp_path, with_repository_of=None)
    imported = run_with_input(machine, "\n".join(lines), "key", "import", expect=0)
    assert "will be checked when the repository" in imported.stdout
    assert "key_id" not in json.loads(machine.key_file.read_text())

    shutil.copytree(shop.repository, machine.repository)
    assert machine.snapshots() == []
    completed = json.loads(machine.key_file.read_text())
    assert completed["key_id"] == json.loads(shop.key_file.read_text())["key_id"]


def test_import_refuses_another_repository_a_removed_key_and_a_different_key_file(
    shop: Shop, tmp_path: Path
) -> None:
    lines = key_lines(shop.run("key", "export", "--paper", expect=0).stdout)
    paper = "\n".join(lines)
    other = Shop(tmp_path / "other-shop")
    other.init()
    foreign = run_with_input(other, paper, "key", "import", "--force")
    assert "belongs to another repository" in one_line_error(foreign)

    machine = new_machine(tmp_path, with_repository_of=None)
    machine.home.mkdir(parents=True)
    shutil.copy(other.key_file, machine.key_file)
    refused = run_with_input(machine, paper, "key", "import")
    assert "a different key file is at" in one_line_error(refused)
    assert machine.key_file.read_bytes() == other.key_file.read_bytes()
    forced = run_with_input(machine, paper, "key", "import", "--force", expect=0)
    assert "is kept at" in forced.stdout
    assert [p.read_bytes() for p in machine.home.glob("repository.key.replaced-*")] == [
        other.key_file.read_bytes()
    ]

    shop.run("key", "add", "--key-file", str(tmp_path / "second.key"), expect=0)
    first = json.loads(shop.key_file.read_text())["key_id"]
    shop.run("key", "remove", first[:8], env={"CAPSULE_KEY_FILE": str(tmp_path / "second.key")}, expect=0)
    late = new_machine(tmp_path / "late", with_repository_of=shop)
    revoked = run_with_input(late, paper, "key", "import")
    assert "no longer accepts this paper key" in one_line_error(revoked)
    assert not late.key_file.exists()


def test_passwd_then_the_old_passphrase_fails_and_the_new_one_opens(bare_shop: Shop, tmp_path: Path) -> None:
    shop = bare_shop
    old_file, new_file = tmp_path / "old.txt", tmp_path / "new.txt"
    old_file.write_text(OLD_PHRASE + "\n")
    new_file.write_text(NEW_PHRASE + "\n")
    shop.init("--passphrase-file", str(old_file))
    changed = shop.run("key", "passwd", "--passphrase-file", str(new_file), expect=0)
    assert "the old passphrase no longer opens the repository" in changed.stdout
    assert [k["type"] for k in keys_of(shop)] == ["key-file", "passphrase"]

    no_key_file = {"CAPSULE_KEY_FILE": str(tmp_path / "absent.key")}
    old = shop.run("snapshots", env={**no_key_file, "CAPSULE_PASSPHRASE": OLD_PHRASE})
    assert "passphrase does not open" in one_line_error(old)
    shop.run("snapshots", env={**no_key_file, "CAPSULE_PASSPHRASE": NEW_PHRASE}, expect=0)

    third = "Third-Phrase 1 from standard input"
    run_with_input(shop, third + "\n", "key", "passwd", env={"CAPSULE_PASSPHRASE": NEW_PHRASE}, expect=0)
    shop.run("snapshots", env={**no_key_file, "CAPSULE_PASSPHRASE": third}, expect=0)
    empty = run_with_input(shop, "\n", "key", "passwd")
    assert "standard input is empty; nothing was changed" in one_line_error(empty)
    for proc in (changed, old, empty):
        assert OLD_PHRASE not in proc.stdout + proc.stderr and NEW_PHRASE not in proc.stdout + proc.stderr


def test_keys_are_added_listed_and_removed_but_never_the_last_or_the_one_in_use(
    shop: Shop, tmp_path: Path
) -> None:
    [only] = keys_of(shop)
    assert only["type"] == "key-file" and only["current"] is True
    assert set(only) == {"key_id", "type", "created_at", "hostname", "current"}
    last = shop.run("key", "remove", str(only["key_id"]))
    assert "is the repository's last key" in one_line_error(last)

    second = tmp_path / "second.key"
    shop.run("key", "add", "--key-file", str(second), expect=0)
    assert second.stat().st_mode & 0o777 == 0o600
    run_with_input(shop, "A phrase for the owner\n", "key", "add", "--passphrase", expect=0)
    listed = keys_of(shop)
    assert [k["type"] for k in listed] == ["key-file", "key-file", "passphrase"]
    assert [k["current"] for k in listed] == [True, False, False]

    in_use = shop.run("key", "remove", str(only["key_id"])[:8])
    assert "is the one in use now" in one_line_error(in_use)
    with_second = {"CAPSULE_KEY_FILE": str(second)}
    shop.run("key", "remove", str(only["key_id"])[:8], env=with_second, expect=0)
    assert "no longer accepts the key" in one_line_error(shop.run("snapshots"))
    unknown = shop.run("key", "remove", "ffffffff", env=with_second)
    assert "no key has the id 'ffffffff'" in one_line_error(unknown)
    assert len(keys_of(shop, env=with_second)) == 2
    usage = shop.run("key", "add", env=with_second)
    assert usage.returncode == 2

    audit = json.loads(shop.run("audit", "--json", env=with_second, expect=0).stdout)
    changes = [e for e in audit if e["type"] == "RepositoryKeyChanged"]
    assert [(e["data"]["change"], e["data"]["key_type"]) for e in changes] == [
        ("added", "key-file"),
        ("added", "passphrase"),
        ("removed", "key-file"),
    ]
    assert changes[2]["data"]["key_id"] == only["key_id"]
    assert all(e["actor"].startswith("person:") and e["stream_id"] == "keys" for e in changes)
    secrets = [json.loads(p.read_text())["secret"] for p in (second,)]
    assert not any(secret in json.dumps(audit) for secret in secrets)

    copy = tmp_path / "usb" / "copy.key"
    shop.run("key", "export", "--to", str(copy), env=with_second, expect=0)
    assert copy.read_bytes() == second.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
    again = shop.run("key", "export", "--to", str(copy), env=with_second)
    assert "already exists" in one_line_error(again)


def converse(shop: Shop, args: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run `capsule ARGS` on a pseudo-terminal that is its controlling terminal, as in a shell,
    typing each answer once its prompt has shown; its exit code and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes capsule
        os.chdir(shop.root)
        os.execve(CAPSULE[0], [*CAPSULE, *args], shop.env())
    received, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                block = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not block:
                break
            received += block
            if pending and received.decode(errors="replace").rstrip().endswith(pending[0][0]):
                os.write(fd, pending.pop(0)[1].encode() + b"\r")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    text = received.decode(errors="replace")
    assert "Traceback" not in text, text
    return os.waitstatus_to_exitcode(status), text


def test_at_a_terminal_the_new_passphrase_is_asked_twice_unechoed_and_the_paper_key_line_by_line(
    shop: Shop, tmp_path: Path
) -> None:
    differ, shown = converse(
        shop, ["key", "add", "--passphrase"], [("New passphrase:", NEW_PHRASE), ("The same again:", "other")]
    )
    assert differ == 1 and "the two passphrases differ; nothing was changed" in shown
    added, shown = converse(
        shop,
        ["key", "add", "--passphrase"],
        [("New passphrase:", NEW_PHRASE), ("The same again:", NEW_PHRASE)],
    )
    assert added == 0 and "Added key" in shown and NEW_PHRASE not in shown
    shop.run(
        "snapshots",
        env={"CAPSULE_KEY_FILE": str(tmp_path / "none"), "CAPSULE_PASSPHRASE": NEW_PHRASE},
        expect=0,
    )

    lines = key_lines(shop.run("key", "export", "--paper", expect=0).stdout)
    machine = new_machine(tmp_path, with_repository_of=shop)
    typed = [(f"line {n}:", line) for n, line in enumerate(lines, 1)]
    imported, shown = converse(machine, ["key", "import"], typed)
    assert imported == 0 and "It opens the repository" in shown


def test_a_key_change_waits_for_another_and_then_says_so(shop: Shop, tmp_path: Path) -> None:
    # Two removals at once, each made with the key the other removes, would both pass the "not the
    # last key" check and leave no key at all: key changes take turns under a `keys` lock.
    second = tmp_path / "second.key"
    shop.run("key", "add", "--key-file", str(second), expect=0)
    first_id = str(keys_of(shop)[0]["key_id"])
    with locked(open_backend(shop.repository), KEYS):
        busy = shop.run("key", "remove", first_id[:8], env={"CAPSULE_KEY_FILE": str(second)})
        assert busy.returncode != 0
        assert "another key change is running" in one_line_error(busy)
        assert len(keys_of(shop)) == 2
    shop.run("key", "remove", first_id[:8], env={"CAPSULE_KEY_FILE": str(second)}, expect=0)
    assert not [name for name in os.listdir(shop.repository / "locks")], "the key change left its lock"
