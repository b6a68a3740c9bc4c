"""Consent for a Drive destination on a server with no browser: the admin opens a URL elsewhere,
and Capsule trades the answer for a refresh token. The fake server plays Google's consent screen
and token endpoint; the test plays the browser."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from capsule.adapters.errors import ClientConfigInvalid
from capsule.adapters.repository.backends.gdrive import open_drive
from capsule.adapters.repository.backends.gdrive_auth import (
    SCOPE,
    client_config_from_file,
    credentials_from,
    finish_consent,
    start_consent,
)
from capsule.domain.errors import Category
from tests.fakes.drive import FakeDrive

REDIRECT = "http://127.0.0.1:8765/api/destinations/gdrive/callback"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as server:
        yield server


@pytest.fixture(autouse=True)
def plain_http_token_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake's token URI is http


def secrets_file(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "client_secret.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def browse(url: str) -> str:
    """Open `url` as the admin's browser would, and return where the consent screen sends it."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    connection.request("GET", f"{parts.path}?{parts.query}")
    answer = connection.getresponse()
    assert answer.status == 302, answer.read()
    connection.close()
    return str(answer.headers["Location"])


@pytest.mark.parametrize("flavour", ["installed", "web"])
def test_consent_in_a_browser_elsewhere_gives_a_refresh_token_that_opens_the_drive(
    fake: FakeDrive, tmp_path: Path, flavour: str
) -> None:
    config = client_config_from_file(secrets_file(tmp_path, fake.client_config(flavour)))
    url, state, verifier = start_consent(config, REDIRECT)

    asked = parse_qs(urlsplit(url).query)
    assert url.startswith(fake.auth_uri), "the client's own auth_uri is used"
    assert asked["access_type"] == ["offline"] and asked["prompt"] == ["consent"]
    assert asked["scope"] == [SCOPE] and asked["state"] == [state]
    assert asked["code_challenge_method"] == ["S256"] and asked["code_challenge"][0] != verifier

    redirected = browse(url)
    assert redirected.startswith(REDIRECT)
    refresh_token = finish_consent(config, REDIRECT, state, verifier, redirected)
    assert refresh_token in fake.refresh_tokens

    backend = open_drive("after-consent", credentials_from(config, refresh_token), root_url=fake.url)
    backend.write("config", "config", b"{}")
    assert backend.read("config", "config") == b"{}"


def test_the_bare_code_is_enough(fake: FakeDrive, tmp_path: Path) -> None:
    config = client_config_from_file(secrets_file(tmp_path, fake.client_config()))
    url, state, verifier = start_consent(config, REDIRECT)
    code = parse_qs(urlsplit(browse(url)).query)["code"][0]
    assert finish_consent(config, REDIRECT, state, verifier, f"  {code}\n") in fake.refresh_tokens


def test_an_answer_to_another_consent_is_refused(fake: FakeDrive, tmp_path: Path) -> None:
    config = client_config_from_file(secrets_file(tmp_path, fake.client_config()))
    url, _, verifier = start_consent(config, REDIRECT)
    _, other_state, _ = start_consent(config, REDIRECT)
    with pytest.raises(ClientConfigInvalid, match="state differs") as caught:
        finish_consent(config, REDIRECT, other_state, verifier, browse(url))
    assert caught.value.category is Category.INVALID_INPUT


def test_a_code_with_the_wrong_verifier_is_refused(fake: FakeDrive, tmp_path: Path) -> None:
    config = client_config_from_file(secrets_file(tmp_path, fake.client_config()))
    url, state, _ = start_consent(config, REDIRECT)
    with pytest.raises(ClientConfigInvalid, match=r"refused the consent's code \(invalid_grant\)"):
        finish_consent(config, REDIRECT, state, "x" * 64, browse(url))


def test_a_denied_consent_says_so(fake: FakeDrive, tmp_path: Path) -> None:
    config = client_config_from_file(secrets_file(tmp_path, fake.client_config()))
    _, state, verifier = start_consent(config, REDIRECT)
    with pytest.raises(ClientConfigInvalid, match="access_denied: consent was not given"):
        finish_consent(config, REDIRECT, state, verifier, f"{REDIRECT}?error=access_denied&state={state}")


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("{ not json", "is not JSON: download the OAuth client's JSON again"),
        ({"other": {}}, 'neither an "installed" nor a "web" OAuth client'),
        ({"installed": {"client_id": "x"}}, "has no client_secret"),
        ({"web": {"client_id": "x", "client_secret": "y", "token_uri": "ftp:x"}}, "token_uri that is not"),
    ],
    ids=["not-json", "no-client", "no-secret", "bad-token-uri"],
)
def test_a_malformed_client_secrets_file_gets_an_error_that_says_what_to_do(
    tmp_path: Path, document: Any, says: str
) -> None:
    with pytest.raises(ClientConfigInvalid, match=says):
        client_config_from_file(secrets_file(tmp_path, document))


def test_a_missing_client_secrets_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigInvalid, match=r"cannot read the client secrets file .*nowhere\.json"):
        client_config_from_file(tmp_path / "nowhere.json")


def test_google_addresses_are_the_default(tmp_path: Path) -> None:
    config = client_config_from_file(
        secrets_file(tmp_path, {"installed": {"client_id": "a", "client_secret": "b"}})
    )
    assert config["installed"]["token_uri"] == "https://oauth2.googleapis.com/token"
    assert config["installed"]["auth_uri"].startswith("https://accounts.google.com/")
