"""Telling people: an e-mail through an SMTP server (smtplib), a JSON POST to a webhook (urllib).

Both are the standard library's, with a timeout on every connection, so that a server that does not
answer costs a tick at most that long. Every failure becomes `DeliveryFailed` with a sentence that
names the server but never a password, and never a webhook's path (which often holds its token).
"""

from __future__ import annotations

import hashlib
import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from capsule.domain.errors import CapsuleError, Category

USER_AGENT = "capsule-alerts/1"


class DeliveryFailed(CapsuleError):
    """Raised when an alert could not be handed to its mail server or webhook; says why, not how to log in."""

    category = Category.UNAVAILABLE


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to send mail; `password` is the plaintext, held only while a mail is sent."""

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = True


def send_email(
    server: SmtpServer, sender: str, recipients: list[str], subject: str, body: str, *, timeout: float
) -> None:
    """One message to every recipient; DeliveryFailed says what went wrong."""
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    where = f"the mail server {server.host}:{server.port}"
    try:
        with smtplib.SMTP(server.host, server.port, timeout=timeout) as smtp:
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if server.username:
                smtp.login(server.username, server.password or "")
            smtp.send_message(message, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as e:
        raise DeliveryFailed(f"{where} refused the login of {server.username} ({e.smtp_code})") from None
    except smtplib.SMTPNotSupportedError as e:
        raise DeliveryFailed(f"{where} does not offer STARTTLS; set alerts.smtp.starttls false") from e
    except smtplib.SMTPResponseException as e:
        raise DeliveryFailed(f"{where} answered {e.smtp_code}: {_text(e.smtp_error)}") from e
    except smtplib.SMTPRecipientsRefused as e:
        raise DeliveryFailed(f"{where} refused the recipients {', '.join(e.recipients)}") from e
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryFailed(f"{where} could not be reached: {_reason(e)}") from e


def post_json(url: str, payload: dict[str, Any], *, timeout: float) -> None:
    """POST `payload` as JSON to `url`; any answer but 2xx is a DeliveryFailed."""
    request = urllib.request.Request(  # noqa: S310 (the settings refuse any scheme but http and https)
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        method="POST",
    )
    where = f"the webhook {shown_url(url)}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (as above)
            answer.read(1024)
    except urllib.error.HTTPError as e:
        raise DeliveryFailed(f"{where} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise DeliveryFailed(f"{where} could not be reached: {_reason(reason)}") from None


def shown_url(url: str) -> str:
    """A webhook's address as it may be printed and recorded: without its path, query or login."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _reason(error: object) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "no answer in time"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _text(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return " ".join(text.split())


def webhook_name(url: str) -> str:
    """How a webhook is named in the log: its address without the path (which may hold a token),
    and a short digest of the whole, so that two webhooks on one server are told apart."""
    shown = shown_url(url)
    if not shown.endswith("/…"):
        return shown
    return f"{shown} ({hashlib.sha256(url.encode()).hexdigest()[:8]})"
