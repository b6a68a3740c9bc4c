"""Alerts: raise an incident when something needs attention, tell every target, clear it after.

`Alerter.tick(now, settings)` is the whole of it, for a service loop to call every few seconds
with the clock and the settings document it holds; nothing here sleeps or keeps time. Each tick:

1. reads what needs attention (`orchestrator/health.py`, the same as `capsule status --check`):
   an overdue kind, a kind whose last backup failed, a failed last restore drill;
2. raises each new incident (`AlertRaised`) and clears each that is no longer true
   (`AlertCleared`), in the incident key's own stream, appended at the version it read: of two
   processes that tick at once, one raises and the other's append is refused and changes nothing;
3. tells each target (`alerts.email` through `alerts.smtp.*`, each `alerts.webhook`) of every
   notice it is owed, once raised and once cleared, and records each try (`AlertDelivered`,
   `AlertDeliveryFailed` with its next try); a failed try is retried at later ticks with a growing
   wait, six tries at most (`domain/alerts.py`).

One alert per incident and one when it clears, whatever the number of ticks between. A delivery
waits at most `timeout` seconds for its server, so a dead one costs a tick that long at most. Two
processes that tick at once raise an incident once, but may both send a try that is due: the log
keeps both tries.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from capsule.adapters.notifiers import DeliveryFailed, SmtpServer, post_json, send_email, webhook_name
from capsule.domain import alerts
from capsule.domain.errors import CapsuleError
from capsule.domain.events import (
    AlertChannel,
    AlertCleared,
    AlertDelivered,
    AlertDeliveryFailed,
    AlertNotice,
    AlertRaised,
    Event,
)
from capsule.domain.settings import BackupSettings, sealed_item
from capsule.domain.staleness import Incident
from capsule.orchestrator import codec, health
from capsule.orchestrator.errors import ConcurrencyConflict
from capsule.orchestrator.eventstore import Metadata
from capsule.orchestrator.runtime import Runtime, new_job_id
from capsule.orchestrator.secrets import SecretBox, SecretUnavailable, box_in, is_sealed

log = structlog.get_logger(__name__)

ACTOR = "system:alerts"
KEYS = (
    *(f"overdue-{kind}" for kind in health.KINDS),
    *(f"failed-{kind}" for kind in health.KINDS),
    "drill-failed",
)
"""Every incident key a tick looks at; each has its own stream."""
TEST = "test"
"""The incident key (and stream) of `capsule alerts test`."""
DEFAULT_TIMEOUT = 10.0
APPEND_TRIES = 5
PASSWORD_KEY = "alerts.smtp.password"  # noqa: S105 (the setting's name, not a password)
WEBHOOK_KEY = "alerts.webhook"


@dataclass(frozen=True)
class Message:
    """What a target is told: a notice of one incident."""

    alert_id: str
    incident: str
    notice: AlertNotice
    reason: str
    subject: str
    summary: str
    at: datetime
    host: str

    def title(self) -> str:
        said = {"raised": self.summary, "cleared": f"cleared: {self.summary}", "test": self.summary}
        return f"Capsule on {self.host}: {said[self.notice]}"

    def body(self, zone: ZoneInfo) -> str:
        when = f"{self.at.astimezone(zone):%Y-%m-%d %H:%M} ({zone.key})"
        what = {
            "raised": f"Raised at {when} on {self.host}. Another message will say when it clears.",
            "cleared": f"Cleared at {when} on {self.host}.",
            "test": f"Sent at {when} from {self.host} by `capsule alerts test`: this target works.",
        }[self.notice]
        return (
            f"{self.summary}\n\n{what}\n"
            f"Incident {self.incident}, alert {self.alert_id}.\n"
            "`capsule status` and `capsule alerts` say more.\n"
        )

    def payload(self) -> dict[str, object]:
        """The webhook's JSON, in the names and time format of `--json`."""
        return {
            "source": "capsule",
            "host": self.host,
            "alert_id": self.alert_id,
            "incident": self.incident,
            "notice": self.notice,
            "reason": self.reason,
            "subject": self.subject,
            "summary": self.summary,
            "at": self.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


@dataclass(frozen=True)
class Target:
    """One place alerts go: `target` is how it is named in the log, `send` tells it."""

    channel: AlertChannel
    target: str
    send: Callable[[Message, ZoneInfo], None]


@dataclass(frozen=True)
class Try:
    """One delivery try a tick made."""

    incident: str
    notice: AlertNotice
    channel: AlertChannel
    target: str
    attempt: int
    error: str | None
    """None: delivered."""


@dataclass
class TickReport:
    """What one tick did: incident keys raised and cleared, and every delivery try."""

    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    tries: list[Try] = field(default_factory=list)


class Alerter:
    """Raises, clears and delivers alerts against one event log; `tick` is its one entry point."""

    def __init__(
        self,
        runtime: Runtime,
        secrets: SecretBox,
        *,
        machine_zone: str,
        host: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.runtime = runtime
        self.secrets = secrets
        self.machine_zone = machine_zone
        self.host = host or socket.gethostname()
        self.timeout = timeout

    @classmethod
    def of(cls, runtime: Runtime, *, timeout: float = DEFAULT_TIMEOUT) -> Alerter:
        """The alerter of `runtime`'s Capsule: its secrets key, this machine's zone and name."""
        from capsule.orchestrator.usecases.settings import machine_timezone  # noqa: PLC0415

        return cls(runtime, box_in(runtime.settings.home), machine_zone=machine_timezone(), timeout=timeout)

    def tick(self, now: datetime, settings: BackupSettings) -> TickReport:
        """Raise, clear and deliver what is owed at `now` under `settings`."""
        zone = ZoneInfo(settings.timezone or self.machine_zone)
        seen = health.observe(self.runtime.engine, self.runtime.store, settings, zone, now)
        wrong = {i.key: i for i in seen.incidents}
        targets = self.targets(settings)
        report = TickReport()
        for key in sorted(set(KEYS) | set(wrong) | set(seen.watched)):
            state = self._load(key)
            if key in wrong and not state.is_open:
                state = self._raise(key, wrong[key], now, state, report)
            elif key not in wrong and state.is_open:
                state = self._clear(key, health.cleared_line(key, seen), now, state, report)
            for owed in alerts.owed(state, [(t.channel, t.target) for t in targets], now):
                target = next(t for t in targets if (t.channel, t.target) == (owed.channel, owed.target))
                self._deliver(key, state=state, owed=owed, target=target, zone=zone, now=now, report=report)
        return report

    def send_test(self, now: datetime, settings: BackupSettings) -> list[Try]:
        """Tell every target a test alert now, once each, and record each try."""
        zone = ZoneInfo(settings.timezone or self.machine_zone)
        alert_id = new_job_id()
        message = Message(alert_id, TEST, "test", "test", "test", "test alert", now, self.host)
        tries = []
        for target in self.targets(settings):
            error = self._send(target, message, zone)
            tries.append(Try(TEST, "test", target.channel, target.target, 1, error))
            self._append(
                TEST,
                alert_id,
                _outcome(
                    alert_id, TEST, notice="test", target=target, attempt=1, error=error, retry=None, now=now
                ),
            )
        return tries

    def targets(self, settings: BackupSettings) -> list[Target]:
        """Where alerts go under `settings`: one e-mail to every recipient, and each webhook."""
        found = []
        if settings.alerts.email:
            recipients = list(settings.alerts.email)
            found.append(Target("email", ", ".join(recipients), self._email_sender(settings, recipients)))
        for item in settings.alerts.webhook:
            sealed = sealed_item(item)
            if sealed is None:  # set by a version that kept it in plain text
                found.append(Target("webhook", webhook_name(item), self._webhook_sender(item)))
            else:
                found.append(Target("webhook", sealed[0], self._webhook_sender(sealed[1], sealed=True)))
        return found

    # ---- the log ----------------------------------------------------------------------------

    def _load(self, key: str) -> alerts.IncidentStream:
        stored = self.runtime.store.read_stream(codec.alert_stream_id(key))
        return alerts.replay(codec.decode(s) for s in stored)

    def _raise(
        self, key: str, incident: Incident, now: datetime, state: alerts.IncidentStream, report: TickReport
    ) -> alerts.IncidentStream:
        alert_id = new_job_id()
        event = AlertRaised(
            job_id=alert_id,
            incident=key,
            reason=incident.reason,
            subject=incident.subject,
            summary=incident.line,
            cause_job_id=incident.cause_job_id,
            at=now,
        )
        if not self._append_at(key, state.version, alert_id, event):
            return self._load(key)  # another process raised it first
        log.warning("alert raised", incident=key, alert_id=alert_id, summary=incident.line)
        report.raised.append(key)
        return alerts.evolve(state, event)

    def _clear(
        self, key: str, summary: str, now: datetime, state: alerts.IncidentStream, report: TickReport
    ) -> alerts.IncidentStream:
        alert_id = str(state.alert_id)
        event = AlertCleared(job_id=alert_id, incident=key, summary=summary, at=now)
        if not self._append_at(key, state.version, alert_id, event):
            return self._load(key)
        log.info("alert cleared", incident=key, alert_id=alert_id, summary=summary)
        report.cleared.append(key)
        return alerts.evolve(state, event)

    def _append_at(self, key: str, version: int, alert_id: str, event: Event) -> bool:
        try:
            self.runtime.store.append(
                codec.alert_stream_id(key),
                version,
                [codec.encode(event)],
                Metadata(actor=ACTOR, correlation_id=alert_id),
                handlers=[self.runtime.handler],
            )
        except ConcurrencyConflict:
            return False
        return True

    def _append(self, key: str, alert_id: str, event: Event) -> None:
        """Append at whatever version the stream is at: a try's outcome is a fact either way."""
        for _ in range(APPEND_TRIES):
            version = self.runtime.store.stream_version(codec.alert_stream_id(key))
            if self._append_at(key, version, alert_id, event):
                return
        log.warning("alert try not recorded", incident=key, alert_id=alert_id, event=type(event).__name__)

    # ---- delivery ---------------------------------------------------------------------------

    def _deliver(
        self,
        key: str,
        *,
        state: alerts.IncidentStream,
        owed: alerts.Owed,
        target: Target,
        zone: ZoneInfo,
        now: datetime,
        report: TickReport,
    ) -> None:
        raised = state.raised
        assert raised is not None  # a notice is owed only for a raised incident
        summary = state.cleared.summary if owed.notice == "cleared" and state.cleared else raised.summary
        at = state.cleared.at if owed.notice == "cleared" and state.cleared else raised.at
        message = Message(
            raised.job_id, key, owed.notice, raised.reason, raised.subject, summary, at, self.host
        )
        error = self._send(target, message, zone)
        retry = alerts.next_try(owed.attempt, now) if error else None
        event = _outcome(
            raised.job_id,
            key,
            notice=owed.notice,
            target=target,
            attempt=owed.attempt,
            error=error,
            retry=retry,
            now=now,
        )
        self._append(key, raised.job_id, event)
        report.tries.append(Try(key, owed.notice, target.channel, target.target, owed.attempt, error))

    def _send(self, target: Target, message: Message, zone: ZoneInfo) -> str | None:
        """None once `target` has the message, else why not (logged, without secrets)."""
        fields = {"incident": message.incident, "channel": target.channel, "target": target.target}
        try:
            target.send(message, zone)
        except CapsuleError as e:
            log.warning("alert not delivered", notice=message.notice, error=str(e), **fields)
            return str(e)
        except Exception as e:
            # A delivery never stops the loop that ticks. Only the error's type is kept: the text
            # of an unexpected error may quote what it was given, a password included.
            said = f"an unexpected {type(e).__name__} while sending"
            log.error("alert not delivered", notice=message.notice, error=said, **fields)
            return said
        log.info("alert delivered", notice=message.notice, **fields)
        return None

    def _email_sender(
        self, settings: BackupSettings, recipients: list[str]
    ) -> Callable[[Message, ZoneInfo], None]:
        smtp = settings.alerts.smtp

        def send(message: Message, zone: ZoneInfo) -> None:
            if not smtp.host:
                raise DeliveryFailed(
                    "alerts.smtp.host is not set: `capsule settings set alerts.smtp.host HOST`"
                )
            password = None
            if smtp.password:
                try:
                    password = (
                        self.secrets.open(PASSWORD_KEY, smtp.password) if is_sealed(smtp.password) else None
                    )
                except SecretUnavailable as e:
                    raise DeliveryFailed(str(e)) from e
            server = SmtpServer(smtp.host, smtp.port, smtp.username, password, smtp.starttls)
            sender = smtp.sender or (smtp.username if smtp.username and "@" in smtp.username else None)
            sender = sender or f"capsule@{self.host}"
            body = message.body(zone)
            send_email(server, sender, recipients, message.title(), body, timeout=self.timeout)

        return send

    def _webhook_sender(self, url: str, *, sealed: bool = False) -> Callable[[Message, ZoneInfo], None]:
        def send(message: Message, zone: ZoneInfo) -> None:
            try:
                address = self.secrets.open(WEBHOOK_KEY, url) if sealed else url
            except SecretUnavailable as e:
                raise DeliveryFailed(str(e)) from e
            post_json(address, message.payload(), timeout=self.timeout)

        return send


def _outcome(
    alert_id: str,
    key: str,
    *,
    notice: AlertNotice,
    target: Target,
    attempt: int,
    error: str | None,
    retry: datetime | None,
    now: datetime,
) -> Event:
    if error is None:
        return AlertDelivered(
            job_id=alert_id,
            incident=key,
            notice=notice,
            channel=target.channel,
            target=target.target,
            attempt=attempt,
            at=now,
        )
    return AlertDeliveryFailed(
        job_id=alert_id,
        incident=key,
        notice=notice,
        channel=target.channel,
        target=target.target,
        attempt=attempt,
        error=error,
        next_try_at=retry,
        at=now,
    )
