"""`capsule status --check`, `capsule alerts` and the SMTP password, as a monitoring system and an
admin use them: real `capsule` processes on a real shop, real SMTP and webhook servers."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import termios
import time
from datetime import UTC, datetime, timedelta

from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.settings import ChangeSetting, change
from tests.integration.alert_servers import smtp_server, webhook_server
from tests.integration.alerting import backup
from tests.integration.helpers import CAPSULE, Shop, describe

PASSWORD = "s3cret-Smtp-pa55word"


def settings_of(shop: Shop) -> Settings:
    return Settings(database=shop.database, repository=shop.repository, home=shop.home)


def set_values(shop: Shop, values: dict[str, str]) -> None:
    """Settings changed in process: quicker than a `capsule settings set` each, and the same use case."""
    for key, value in values.items():
        change(settings_of(shop), ChangeSetting(key, value))


def with_log(shop: Shop, *backups: tuple[str, timedelta, str | None]) -> None:
    """Backups of the given kinds, ages and errors, recorded in the shop's event log."""
    runtime = Runtime(settings_of(shop))
    try:
        now = datetime.now(UTC)
        for kind, age, error in backups:
            backup(runtime, kind, now - age, error=error)
    finally:
        runtime.close()


def test_status_check_prints_ok_or_one_line_per_problem_with_its_own_exit_code(shop: Shop) -> None:
    set_values(shop, {"schedules.files.enabled": "false"})
    with_log(shop, ("database", timedelta(hours=3, minutes=10), None))
    overdue = "database: last good backup 3 h 10 min ago, OVERDUE (hourly)"

    assert shop.run("status", "--check", expect=5).stdout == overdue + "\n"
    assert overdue in shop.run("status", expect=0).stdout.splitlines()

    with_log(shop, ("database", timedelta(0), "the disk is full"))
    both = shop.run("status", "--check", expect=5).stdout.splitlines()
    doc = json.loads(shop.run("status", "--check", "--json", expect=5).stdout)

    assert both[0] == overdue
    assert both[1].startswith("database: the last backup (job ") and both[1].endswith("the disk is full")
    assert doc["ok"] is False
    assert [p["incident"] for p in doc["problems"]] == ["overdue-database", "failed-database"]

    with_log(shop, ("database", timedelta(minutes=12), None))
    assert shop.run("status", "--check", expect=0).stdout == "ok\n"


def test_the_smtp_password_is_read_from_stdin_and_never_printed_logged_or_stored_in_plaintext(
    shop: Shop,
) -> None:
    set_it = subprocess.run(
        [*CAPSULE, "settings", "set", "alerts.smtp.password", "-"],
        input=PASSWORD + "\n",
        cwd=shop.root,
        env=shop.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert set_it.returncode == 0, describe(set_it)
    assert set_it.stdout == "alerts.smtp.password: - -> ******** (version 1).\n"

    outputs = [set_it.stdout + set_it.stderr]
    for args in (["settings", "show"], ["settings", "show", "--json"], ["audit", "--json"]):
        proc = shop.run(*args, expect=0)
        outputs.append(proc.stdout + proc.stderr)
    shown = dict(line.split(None, 1) for line in outputs[1].splitlines() if line.startswith("alerts.smtp."))
    assert shown["alerts.smtp.password"] == "********"
    assert json.loads(outputs[2])["settings"]["alerts"]["smtp"]["password"] == "********"
    assert "sealed:v1:" in outputs[3]
    assert all(PASSWORD not in out for out in outputs)
    stored = b"".join(p.read_bytes() for p in shop.home.rglob("*") if p.is_file())
    assert PASSWORD.encode() not in stored
    assert (shop.home / "logs" / "capsule.log").exists()


def test_alerts_test_reaches_every_target_and_alerts_lists_what_was_sent(shop: Shop) -> None:
    with smtp_server() as (mailbox, port), webhook_server() as hook:
        set_values(
            shop,
            {
                "alerts.email": "owner@shop.example",
                "alerts.webhook": hook.url,
                "alerts.smtp.host": "127.0.0.1",
                "alerts.smtp.port": str(port),
                "alerts.smtp.starttls": "false",
            },
        )

        tested = shop.run("alerts", "test", expect=0)

    lines = tested.stdout.splitlines()
    assert lines[0] == "email owner@shop.example: delivered"
    assert lines[1].startswith("webhook http://127.0.0.1:") and lines[1].endswith(": delivered")
    assert "T0K3N" not in tested.stdout
    assert len(mailbox.messages) == 1 and hook.bodies[0]["notice"] == "test"
    listed = json.loads(shop.run("alerts", "--json", expect=0).stdout)
    assert listed == {"open": [], "recent": []}
    assert shop.run("alerts", expect=0).stdout.splitlines() == ["Open incidents: 0", "No alert yet."]


def test_a_test_alert_with_no_target_says_how_to_set_one(shop: Shop) -> None:
    proc = shop.run("alerts", "test", expect=1)
    assert proc.stderr.startswith("capsule: no alert target is set; set one with `capsule settings set")


def test_at_a_terminal_the_password_is_asked_for_without_echo(shop: Shop) -> None:
    controller, terminal = pty.openpty()

    def own_terminal() -> None:  # the terminal becomes the process's own, as in a shell
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(
            [*CAPSULE, "settings", "set", "alerts.smtp.password", "-"],
            cwd=shop.root,
            env=shop.env(),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            preexec_fn=own_terminal,
        )
        os.close(terminal)
        terminal = -1
        received = read_until(controller, b"alerts.smtp.password: ")
        os.write(controller, PASSWORD.encode() + b"\n")
        received += read_until(controller, None)
        code = proc.wait(timeout=60)
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)

    assert code == 0, received
    assert PASSWORD.encode() not in received
    assert b"alerts.smtp.password: - -> ******** (version 1)." in received


def read_until(controller: int, wanted: bytes | None, timeout: float = 60) -> bytes:
    """What the terminal shows until `wanted` appears, or (None) until the process closes it."""
    received = b""
    deadline = time.monotonic() + timeout
    while wanted is None or wanted not in received:
        ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the terminal showed only {received!r}"
        try:
            block = os.read(controller, 65536)
        except OSError:  # EIO: every end of the terminal is closed
            break
        if not block:
            break
        received += block
    return received
