"""Asking the admin for Google's consent from a terminal on a server without a browser.

The consent address is printed for any browser, anywhere. Two ways bring the answer back, whichever
comes first: a listener on `127.0.0.1:<port>` receives the browser's redirect (a browser on this
machine, or on the admin's own through `ssh -L <port>:127.0.0.1:<port>`), or the admin pastes the
address the browser ended on (a page that could not be reached) or the bare code on standard input.
Everything said goes to standard error, so that `--json` keeps standard output for the result.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import click

from capsule.domain.errors import CapsuleError, Category

if TYPE_CHECKING:
    from capsule.orchestrator.usecases.consent import PendingConsent

WAIT_SECONDS = 900.0
"""How long an answer is waited for: Google's codes last about ten minutes."""

_ANSWERED = (
    b"<!doctype html><meta charset=utf-8><title>Capsule</title>"
    b"<p>Capsule received Google's answer. You can close this tab and go back to the terminal.</p>"
)


class NoConsentAnswer(CapsuleError):
    """Raised when no consent answer came back in time, or the listener's port cannot be used."""

    category = Category.UNAVAILABLE


def ask(
    begin: Callable[[int], PendingConsent], port: int = 0, wait: float = WAIT_SECONDS
) -> tuple[PendingConsent, str]:
    """Print the consent address of `begin(port)` and return it with the answer that came back."""
    answers: queue.Queue[str] = queue.Queue()
    server = _listen(port, answers)
    port = int(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pending = begin(port)
        _say(pending, port)
        threading.Thread(target=_read_stdin, args=(answers,), daemon=True).start()
        try:
            answer = answers.get(timeout=wait)
        except queue.Empty:
            raise NoConsentAnswer(
                f"no answer came back within {wait / 60:.0f} minutes: run the command again and finish "
                "the consent in the browser sooner"
            ) from None
    finally:
        server.shutdown()
        server.server_close()
    click.echo("Google's answer received; trading it for Capsule's authorization.", err=True)
    return pending, answer


def _say(pending: PendingConsent, port: int) -> None:
    echo = click.echo
    echo(
        "Open this address in a browser on any machine, sign in with the Google account that will "
        "hold the copies, and allow access:",
        err=True,
    )
    echo("", err=True)
    echo(f"  {pending.url}", err=True)
    echo("", err=True)
    echo(
        f"Capsule listens on 127.0.0.1:{port} for Google's answer: with the browser on this machine, "
        f"or on yours through `ssh -L {port}:127.0.0.1:{port} <this server>`, it comes back by itself.",
        err=True,
    )
    echo(
        f"Otherwise the browser ends on a page that cannot be reached: copy its whole address (it "
        f"starts with http://127.0.0.1:{port}/) or the code in it, paste it here and press Enter.",
        err=True,
    )
    echo("Address or code: ", err=True, nl=False)
    sys.stderr.flush()


def _read_stdin(answers: queue.Queue[str]) -> None:
    for line in sys.stdin:
        if line.strip():
            answers.put(line.strip())
            return


def _listen(port: int, answers: queue.Queue[str]) -> HTTPServer:
    class Redirected(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            if not ({"code", "error"} & set(query)):
                self.send_error(404)  # a browser's favicon request, say
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(_ANSWERED)))
            self.end_headers()
            self.wfile.write(_ANSWERED)
            answers.put(f"http://127.0.0.1:{server.server_address[1]}{self.path}")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line holds the code: never printed

    try:
        server = HTTPServer(("127.0.0.1", port), Redirected)
    except OSError as e:
        raise NoConsentAnswer(
            f"cannot listen on 127.0.0.1:{port} ({e.strerror}): choose another --port, or leave it out "
            "for a free one"
        ) from e
    return server
