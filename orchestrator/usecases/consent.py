"""Google's consent for a Drive destination, given on a server with no browser of its own.

`begin` builds the consent address for the OAuth client of a client-secrets document (or, to renew,
of the destination's own client) and keeps the `state` and PKCE `code_verifier` in the returned
`PendingConsent`, in this process only: nothing of them is recorded. `finish` takes what came back
(the address the browser was sent to, or the bare code), checks its state and trades the code for a
refresh token, which `add_gdrive` or `renew_consent` seal.

`add_drive` and `renew` do it all for a front door that talks to a person (`ConsentPrompt`): the
redirect goes to the loopback address at a port of this host, where Google accepts any port for a
"Desktop app" client. A listener there receives it from a browser on this host, or on the admin's
own through an SSH tunnel of that port; any other browser shows an unreachable page whose address
(or code) the admin pastes. Whichever answer comes first is taken.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from capsule.domain.destinations import InvalidDestination
from capsule.domain.errors import CapsuleError, Category

if TYPE_CHECKING:
    from pathlib import Path

    from capsule.orchestrator.settings import Settings
    from capsule.orchestrator.usecases.destinations import DestinationChanged

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
WAIT_SECONDS = 900.0
"""How long an answer is waited for; Google's codes last about ten minutes."""
ANSWERED_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>Capsule</title>"
    b"<p>Capsule received Google's answer. You can close this tab and go back to the terminal.</p>"
)


class NoConsentAnswer(CapsuleError):
    """Raised when no consent answer came back in time, or the listener's port cannot be used."""

    category = Category.UNAVAILABLE


class ConsentPrompt(Protocol):
    """How a front door asks a person for consent."""

    def show(self, url: str, port: int) -> None:
        """Say to open `url` in a browser, and that the loopback `port` listens for the answer."""

    def pasted(self) -> Iterable[str]:
        """Lines the person types or pastes (an address or a code)."""

    def received(self) -> None:
        """Say that an answer came back."""


@dataclass(frozen=True)
class PendingConsent:
    """A consent asked for and not answered yet: the address to open, and what checks the answer."""

    url: str
    redirect_uri: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)
    client: dict[str, Any] = field(repr=False)
    """The client-secrets document the consent is for (its secret inside): for the exchange only."""


def client_of_file(document: dict[str, Any]) -> dict[str, Any]:
    """The OAuth client of a client-secrets document, its own auth_uri and token_uri honoured."""
    from capsule.adapters.repository.backends.gdrive_auth import client_config_from_dict  # noqa: PLC0415

    return client_config_from_dict(document)


def check_can_add(settings: Settings, name: str) -> None:
    """Refuse a name that cannot be added before the admin spends time in a browser: the same
    refusals as adding (`DestinationExists`, `InvalidDestination`)."""
    from capsule.domain import destinations as rules  # noqa: PLC0415
    from capsule.orchestrator.destinations import load  # noqa: PLC0415

    rules.check_name(name)
    if name in load(settings).by_name:
        raise rules.DestinationExists(
            f"there is a destination named `{name}` already; choose another name, or give it a new "
            f"consent with `capsule destinations renew {name}`"
        )


def client_of_destination(settings: Settings, name: str, document: dict[str, Any] | None) -> dict[str, Any]:
    """The OAuth client Drive destination `name` was added with, to consent again: its id, sealed
    secret and token address; the consent address from `document` when given (it must be the same
    client), else Google's."""
    from capsule.orchestrator.destinations import load, open_secrets  # noqa: PLC0415

    destination = load(settings).get(name)
    if destination.kind != "gdrive":
        raise InvalidDestination(
            f"`{name}` is a {destination.kind} destination: only a Google Drive destination has a consent"
        )
    auth_uri = GOOGLE_AUTH_URI
    if document is not None:
        given = next(iter(client_of_file(document).values()))
        if given["client_id"] != destination.client_id:
            raise InvalidDestination(
                f"the client secrets file is for another OAuth client than the destination {name} was added "
                f"with: give that client's file, or remove {name} and add it again with this one"
            )
        auth_uri = given["auth_uri"]
    client_secret, _ = open_secrets(settings, destination)
    return {
        "installed": {
            "client_id": destination.client_id,
            "client_secret": client_secret,
            "auth_uri": auth_uri,
            "token_uri": destination.token_uri,
        }
    }


def begin(client: dict[str, Any], port: int) -> PendingConsent:
    """Ask for consent with the redirect to this machine's loopback at `port`."""
    from capsule.adapters.repository.backends import gdrive_auth  # noqa: PLC0415

    redirect_uri = f"http://127.0.0.1:{port}/"
    url, state, verifier = gdrive_auth.start_consent(client, redirect_uri)
    return PendingConsent(url, redirect_uri, state, verifier, client)


def finish(pending: PendingConsent, answer: str) -> str:
    """The refresh token the answer (the redirected address or the bare code) is traded for."""
    from capsule.adapters.repository.backends import gdrive_auth  # noqa: PLC0415

    answer = answer.strip()
    if "://" not in answer and "?" not in answer and "%" in answer:
        # A code copied out of the address bar keeps its escapes (`4%2F0A...`); codes hold no `%`.
        answer = unquote(answer)
    return gdrive_auth.finish_consent(
        pending.client, pending.redirect_uri, pending.state, pending.code_verifier, answer
    )


def add_drive(
    settings: Settings,
    name: str,
    client_secrets: Path,
    refresh_token_file: Path | None,
    prompt: ConsentPrompt,
    *,
    port: int = 0,
    folder_name: str | None = None,
    bandwidth: str | None = None,
) -> DestinationChanged:
    """Add Drive destination `name` for the client of `client_secrets`: with the token in
    `refresh_token_file`, else with a consent asked for through `prompt`; with a bandwidth limit
    if given, which is checked before consent is asked for."""
    from capsule.orchestrator.usecases import destinations as uc  # noqa: PLC0415

    if bandwidth is not None:
        uc.parse_bandwidth(bandwidth)
    document = uc.read_client_secrets(client_secrets)
    if refresh_token_file is not None:
        token = uc.read_refresh_token(refresh_token_file)
    else:
        check_can_add(settings, name)
        token = ask(client_of_file(document), prompt, port)
    added = uc.add_gdrive(settings, name, document, token, folder_name=folder_name)
    if bandwidth is None or uc.parse_bandwidth(bandwidth) is None:
        return added
    limited = uc.limit_bandwidth(settings, name, bandwidth)
    return dataclasses.replace(limited, action=added.action)


def renew(
    settings: Settings,
    name: str,
    refresh_token_file: Path | None,
    client_secrets: Path | None,
    prompt: ConsentPrompt,
    *,
    port: int = 0,
) -> DestinationChanged:
    """Renew Drive destination `name`'s consent: the token in `refresh_token_file`, else a consent
    asked for through `prompt` with the destination's own client."""
    from capsule.orchestrator.usecases import destinations as uc  # noqa: PLC0415

    if refresh_token_file is not None:
        token = uc.read_refresh_token(refresh_token_file)
    else:
        document = uc.read_client_secrets(client_secrets) if client_secrets else None
        token = ask(client_of_destination(settings, name, document), prompt, port)
    return uc.renew_consent(settings, name, token)


def ask(client: dict[str, Any], prompt: ConsentPrompt, port: int = 0, wait: float = WAIT_SECONDS) -> str:
    """The refresh token of a consent asked for through `prompt`: the first answer that comes back,
    by the loopback listener or pasted, is traded for it."""
    answers: queue.Queue[str] = queue.Queue()
    server = _listen(port, answers)
    port = int(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pending = begin(client, port)
        prompt.show(pending.url, port)
        threading.Thread(target=_first_line, args=(prompt.pasted(), answers), daemon=True).start()
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
    prompt.received()
    return finish(pending, answer)


def _first_line(lines: Iterable[str], answers: queue.Queue[str]) -> None:
    for line in lines:
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
            self.send_header("Content-Length", str(len(ANSWERED_PAGE)))
            self.end_headers()
            self.wfile.write(ANSWERED_PAGE)
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
