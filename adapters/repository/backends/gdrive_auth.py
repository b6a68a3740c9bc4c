"""Google's consent for a Drive destination, on a server with no browser of its own.

The admin brings the OAuth client's secrets file (downloaded from the Google Cloud console, an
"installed" or a "web" client). `start_consent` gives the URL to open in any browser and the `state`
and PKCE `code_verifier` that the server keeps until the answer comes back; `finish_consent` takes the
code, or the whole URL the browser was sent to, checks its `state`, and trades the code for a refresh
token. The scope is `drive.file`: Capsule sees only the files it made.

A client whose consent screen is still in "Testing" gets refresh tokens that Google expires after
7 days: publish the consent screen, or consent again each week.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google_auth_oauthlib.flow import Flow
from oauthlib.oauth2.rfc6749 import errors as oauth_errors

from capsule.adapters.errors import ClientConfigInvalid, StorageUnavailable

SCOPE = "https://www.googleapis.com/auth/drive.file"
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - an address, not a secret

WHERE_TO_GET_ONE = (
    "download the OAuth client's JSON again from the Google Cloud console (APIs & Services > "
    "Credentials, a Desktop app or Web application client)"
)


@dataclass(frozen=True)
class DriveCredentials:
    """What lets Capsule act for the Drive account: the OAuth client and the refresh token."""

    client_id: str
    client_secret: str
    refresh_token: str
    token_uri: str = GOOGLE_TOKEN_URI

    def __repr__(self) -> str:
        return (
            f"DriveCredentials(client_id={self.client_id!r}, client_secret='<hidden>', "
            f"refresh_token='<hidden>', token_uri={self.token_uri!r})"
        )

    __str__ = __repr__


def client_config_from_file(path: Path) -> dict[str, Any]:
    """Read Google's client-secrets JSON; return it as `{"installed" | "web": {...}}` with the
    client's own auth_uri and token_uri (Google's when the file names none)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ClientConfigInvalid(f"cannot read the client secrets file {path}: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientConfigInvalid(f"the client secrets file {path} is not JSON: {WHERE_TO_GET_ONE}") from e
    return client_config_from_dict(document, str(path))


def client_config_from_dict(document: object, origin: str = "the client secrets") -> dict[str, Any]:
    """The same checks as `client_config_from_file`, on a parsed document."""
    flavour = next((f for f in ("installed", "web") if isinstance(document, dict) and f in document), None)
    if flavour is None or not isinstance(document, dict) or not isinstance(document[flavour], dict):
        raise ClientConfigInvalid(
            f'{origin} holds neither an "installed" nor a "web" OAuth client: {WHERE_TO_GET_ONE}'
        )
    client = dict(document[flavour])
    missing = [
        k for k in ("client_id", "client_secret") if not isinstance(client.get(k), str) or not client[k]
    ]
    if missing:
        raise ClientConfigInvalid(f"{origin} has no {' and no '.join(missing)}: {WHERE_TO_GET_ONE}")
    client.setdefault("auth_uri", GOOGLE_AUTH_URI)
    client.setdefault("token_uri", GOOGLE_TOKEN_URI)
    for key in ("auth_uri", "token_uri"):
        if not str(client[key]).startswith(("https://", "http://")):
            raise ClientConfigInvalid(f"{origin} has a {key} that is not a URL: {WHERE_TO_GET_ONE}")
    return {flavour: client}


def _client(config: dict[str, Any]) -> dict[str, Any]:
    return dict(next(iter(config.values())))


def credentials_from(config: dict[str, Any], refresh_token: str) -> DriveCredentials:
    client = _client(config)
    return DriveCredentials(client["client_id"], client["client_secret"], refresh_token, client["token_uri"])


def start_consent(client_config: dict[str, Any], redirect_uri: str) -> tuple[str, str, str]:
    """Return (the URL the admin opens, state, code_verifier); keep the last two for the answer."""
    flow = Flow.from_client_config(client_config, scopes=[SCOPE], redirect_uri=redirect_uri)
    url, state = flow.authorization_url(access_type="offline", prompt="consent")
    return str(url), str(state), str(flow.code_verifier)


def finish_consent(
    client_config: dict[str, Any],
    redirect_uri: str,
    state: str,
    code_verifier: str,
    code_or_redirected_url: str,
) -> str:
    """Trade the consent's answer for a refresh token.

    The answer is the URL the browser was redirected to (its state must be ours) or the bare code."""
    code = _code_from(code_or_redirected_url.strip(), state)
    flow = Flow.from_client_config(
        client_config, scopes=[SCOPE], redirect_uri=redirect_uri, state=state, code_verifier=code_verifier
    )
    try:
        flow.fetch_token(code=code)
    except oauth_errors.InsecureTransportError as e:
        raise ClientConfigInvalid("the client's token_uri must use https") from e
    except oauth_errors.OAuth2Error as e:
        raise ClientConfigInvalid(
            f"Google refused the consent's code ({e.error}): it may be used or too old; start the "
            "consent again"
        ) from None
    except OSError as e:
        raise StorageUnavailable(f"Google's token endpoint could not be reached: {e}", retryable=True) from e
    refresh_token = flow.credentials.refresh_token
    if not refresh_token:
        raise ClientConfigInvalid(
            "Google gave no refresh token: remove Capsule's access at "
            "https://myaccount.google.com/permissions and start the consent again"
        )
    return str(refresh_token)


def _code_from(answer: str, state: str) -> str:
    if "://" not in answer and "?" not in answer:
        if not answer:
            raise ClientConfigInvalid(
                "no code given: paste the code, or the whole address the browser showed"
            )
        return answer
    query = {k: v[-1] for k, v in parse_qs(urlsplit(answer).query).items()}
    if "error" in query:
        raise ClientConfigInvalid(
            f"Google answered {query['error']}: consent was not given; start the consent again"
        )
    if not secrets.compare_digest(query.get("state", ""), state):
        raise ClientConfigInvalid(
            "the address does not answer this consent (its state differs): start the consent again "
            "and use the address that consent leads to"
        )
    if not query.get("code"):
        raise ClientConfigInvalid("the address holds no code: paste the whole address the browser showed")
    return query["code"]
