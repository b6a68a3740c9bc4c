"""Alerts against a real event log, a real SMTP server and a real webhook, with the clock given.

One alert per incident and one when it clears, whatever the number of ticks; a failing webhook is
tried again at later ticks with a growing wait; the SMTP password reaches the server and nothing
else. No test waits for a retry: each tick is given its `now`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from capsule.domain.settings import BackupSettings, with_changes
from capsule.orchestrator import codec, projections
from capsule.orchestrator.alerts import Alerter
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.secrets import box_in
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.jobs import replay_log
from capsule.orchestrator.usecases.settings import ChangeSetting, change, show
from tests.integration.alert_servers import Mailbox, Webhook, smtp_server, webhook_server
from tests.integration.alerting import backup

NOW = datetime.now(UTC).replace(microsecond=0)
PASSWORD = "pa55-w0rd-never-in-a-log"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=tmp_path / "pos.db", repository=tmp_path / "backups", home=tmp_path / "home")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def hook() -> Iterator[Webhook]:
    with webhook_server() as server:
        yield server


def alerter(runtime: Runtime, settings: Settings, timeout: float = 5.0) -> Alerter:
    return Alerter(runtime, box_in(settings.home), machine_zone="UTC", host="pos-server", timeout=timeout)


def document(port: int | None = None, webhooks: tuple[str, ...] = ()) -> BackupSettings:
    """Only the hourly database schedule, so that the images are never overdue here."""
    changes: dict[str, object] = {
        "timezone": "UTC",
        "schedules.files.enabled": False,
        "schedules.database-full.enabled": False,
        "alerts.webhook": list(webhooks),
    }
    if port is not None:
        changes |= {
            "alerts.email": ["owner@shop.example"],
            "alerts.smtp.host": "127.0.0.1",
            "alerts.smtp.port": port,
            "alerts.smtp.starttls": False,
        }
    return with_changes(BackupSettings(), changes)  # type: ignore[arg-type]


def subject(message: Message) -> str:
    """The subject as a mail reader shows it (a long one is folded onto a line of its own)."""
    return " ".join(str(message["Subject"]).split())


def stream_types(runtime: Runtime, key: str) -> list[str]:
    return [e.type for e in runtime.store.read_stream(codec.alert_stream_id(key))]


def test_an_overdue_kind_is_told_once_and_its_clearing_once(
    runtime: Runtime, settings: Settings, mail: tuple[Mailbox, int], hook: Webhook
) -> None:
    mailbox, port = mail
    doc = document(port, (hook.url,))
    backup(runtime, "database", NOW - timedelta(hours=3, minutes=10))
    ticker = alerter(runtime, settings)

    first = ticker.tick(NOW, doc)
    for seconds in (5, 10, 600):
        assert ticker.tick(NOW + timedelta(seconds=seconds), doc).tries == []

    assert first.raised == ["overdue-database"]
    (message,) = mailbox.messages
    assert subject(message) == (
        "Capsule on pos-server: database: last good backup 3 h 10 min ago, OVERDUE (hourly)"
    )
    assert message["To"] == "owner@shop.example"
    (raised,) = hook.bodies
    assert {k: raised[k] for k in ("incident", "notice", "reason", "subject", "host")} == {
        "incident": "overdue-database",
        "notice": "raised",
        "reason": "overdue",
        "subject": "database",
        "host": "pos-server",
    }
    assert raised["at"] == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")

    backup(runtime, "database", NOW + timedelta(minutes=11))
    cleared = ticker.tick(NOW + timedelta(minutes=12), doc)
    ticker.tick(NOW + timedelta(minutes=13), doc)

    assert cleared.cleared == ["overdue-database"]
    assert subject(mailbox.messages[1]) == (
        "Capsule on pos-server: cleared: database: last good backup 1 min ago (hourly)"
    )
    assert [b["notice"] for b in hook.bodies] == ["raised", "cleared"]
    assert stream_types(runtime, "overdue-database") == [
        "AlertRaised",
        "AlertDelivered",
        "AlertDelivered",
        "AlertCleared",
        "AlertDelivered",
        "AlertDelivered",
    ]
    before = projections.list_jobs(runtime.engine, limit=100)
    replay_log(settings)  # the alert streams are facts of the log, no read model's rows
    assert projections.list_jobs(runtime.engine, limit=100) == before


def test_a_failing_webhook_is_tried_again_with_a_growing_wait_each_try_an_event(
    runtime: Runtime, settings: Settings
) -> None:
    backup(runtime, "database", NOW - timedelta(hours=5))
    ticker = alerter(runtime, settings)
    with webhook_server(failures=2) as hook:
        doc = document(webhooks=(hook.url,))
        tries = [ticker.tick(NOW + timedelta(seconds=s), doc).tries for s in (0, 10, 30, 60, 90)]

    assert [[t.attempt for t in ticked] for ticked in tries] == [[1], [], [2], [], [3]]
    port = hook.url.split(":")[2].split("/")[0]
    said = f"the webhook http://127.0.0.1:{port}/… answered HTTP 503 Service Unavailable"
    assert [t.error for t in tries[0] + tries[2]] == [said, said]
    assert tries[4][0].error is None and len(hook.bodies) == 1
    events = runtime.store.read_stream(codec.alert_stream_id("overdue-database"))
    failed = [e.data for e in events if e.type == "AlertDeliveryFailed"]
    assert [(f["attempt"], f["next_try_at"]) for f in failed] == [
        (1, (NOW + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")),
        (2, (NOW + timedelta(seconds=90)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    ]
    assert "T0K3N" not in str([e.data for e in events])  # the webhook's path holds its token


def test_a_target_that_never_answers_costs_a_tick_its_timeout_and_is_given_up_after_six_tries(
    runtime: Runtime, settings: Settings
) -> None:
    backup(runtime, "database", NOW - timedelta(hours=5))
    ticker = alerter(runtime, settings, timeout=0.3)
    with webhook_server(silent=True) as hook:
        doc = document(webhooks=(hook.url,))
        started = time.monotonic()
        first = ticker.tick(NOW, doc)
        took = time.monotonic() - started
        later = [ticker.tick(NOW + timedelta(hours=h), doc).tries for h in (1, 2, 3, 4, 5, 6)]

    assert took < 3
    assert first.tries[0].error is not None and "no answer in time" in first.tries[0].error
    assert [len(t) for t in later] == [1, 1, 1, 1, 1, 0]
    (last,) = later[4]
    assert last.attempt == 6


def test_a_failed_backup_raises_an_incident_that_a_completed_one_clears(
    runtime: Runtime, settings: Settings, hook: Webhook
) -> None:
    doc = document(webhooks=(hook.url,))
    failed = backup(runtime, "database", NOW, error="the disk is full")
    ticker = alerter(runtime, settings)

    assert ticker.tick(NOW, doc).raised == ["failed-database"]
    backup(runtime, "database", NOW + timedelta(minutes=1))
    assert ticker.tick(NOW + timedelta(minutes=1), doc).cleared == ["failed-database"]

    raised, cleared = hook.bodies
    assert raised["summary"].startswith(f"database: the last backup (job {failed}) failed:")
    assert cleared["notice"] == "cleared" and cleared["summary"].endswith("completed")
    (event,) = [e for e in runtime.store.read_stream("alert-failed-database") if e.type == "AlertRaised"]
    assert event.data["cause_job_id"] == failed and event.metadata.actor == "system:alerts"


def test_two_alerters_raise_an_incident_once(event_store_url: str, tmp_path: Path) -> None:
    settings = Settings(database=tmp_path / "pos.db", home=tmp_path / "home", event_store_url=event_store_url)
    one, two = Runtime(settings), Runtime(settings)
    try:
        backup(one, "database", NOW - timedelta(hours=5))
        first, second = alerter(one, settings), alerter(two, settings)
        stale = second._load("overdue-database")  # read before the first raises: the race, held still

        assert first.tick(NOW, document()).raised == ["overdue-database"]
        incident = next(i for i in _incidents(two) if i.key == "overdue-database")
        from capsule.orchestrator.alerts import TickReport

        report = TickReport()
        second._raise("overdue-database", incident, NOW, stale, report)
        assert report.raised == []
        assert second.tick(NOW, document()).raised == []
        assert stream_types(one, "overdue-database") == ["AlertRaised"]
    finally:
        one.close()
        two.close()


def _incidents(runtime: Runtime):
    from zoneinfo import ZoneInfo

    from capsule.orchestrator import health

    return health.observe(runtime.engine, runtime.store, document(), ZoneInfo("UTC"), NOW).incidents


def test_the_smtp_password_is_sealed_reaches_the_server_and_nothing_else(
    runtime: Runtime, settings: Settings, mail: tuple[Mailbox, int], tmp_path: Path
) -> None:
    mailbox, port = mail
    for key, value in {
        "timezone": "UTC",
        "schedules.files.enabled": "false",
        "alerts.email": "owner@shop.example",
        "alerts.smtp.host": "127.0.0.1",
        "alerts.smtp.port": str(port),
        "alerts.smtp.starttls": "false",
        "alerts.smtp.username": "capsule@shop.example",
        "alerts.smtp.password": PASSWORD,
    }.items():
        done = change(settings, ChangeSetting(key, value))
    assert done.new == "********"
    backup(runtime, "database", NOW - timedelta(hours=5))

    with capture_logs() as logs:
        alerter(runtime, settings).tick(NOW, show(settings).document)
        alerter(runtime, settings).send_test(NOW, show(settings).document)

    assert mailbox.logins == [("capsule@shop.example", PASSWORD)] * 2
    assert [m["From"] for m in mailbox.messages] == ["capsule@shop.example"] * 2
    assert subject(mailbox.messages[1]) == "Capsule on pos-server: test alert"
    assert PASSWORD not in repr(logs)
    raw = b"".join(p.read_bytes() for p in settings.home.rglob("*") if p.is_file())
    assert PASSWORD.encode() not in raw and b"sealed:v1:" in raw


def test_a_test_alert_goes_to_every_target_and_says_which_failed(
    runtime: Runtime, settings: Settings, hook: Webhook
) -> None:
    doc = with_changes(document(webhooks=(hook.url,)), {"alerts.email": ["owner@shop.example"]})

    tries = alerter(runtime, settings).send_test(NOW, doc)

    assert [(t.channel, t.error) for t in tries] == [
        ("email", "alerts.smtp.host is not set: `capsule settings set alerts.smtp.host HOST`"),
        ("webhook", None),
    ]
    assert hook.bodies[0]["notice"] == "test"
    assert stream_types(runtime, "test") == ["AlertDeliveryFailed", "AlertDelivered"]
