"""Google's consent for a Drive destination, given on a server with no browser of its own.

`begin` builds the consent address for the OAuth client of a client-secrets document (or, to renew,
of the destination's own client) and keeps the `state` and PKCE `code_verifier` in the returned
`PendingConsent`, in this process only: nothing of them is recorded. `finish` takes what came back
(the address the browser was sent to, or the bare code), checks its state and trades the code for a
refresh token, which the caller hands to `add_gdrive` or `renew_consent` to be sealed.

The redirect goes to `http://127.0.0.1:<port>/`: Google accepts any loopback port for a "Desktop
app" client. A browser on this machine, or on another one through an SSH tunnel of that port,
reaches a listener there; any other browser shows an unreachable page whose address the admin
pastes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from capsule.domain.destinations import InvalidDestination

if TYPE_CHECKING:
    from capsule.orchestrator.settings import Settings

GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"


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
