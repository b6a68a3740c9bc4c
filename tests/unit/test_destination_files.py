"""The files `capsule destinations add gdrive` reads: Google's client secrets JSON and a refresh
token file. A wrong one is refused saying what to fetch again, and no message holds a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsule.orchestrator.usecases.destinations import (
    UnreadableFile,
    client_config,
    read_client_secrets,
    read_refresh_token,
)

SECRET = "GOCSPX-do-not-print"


@pytest.mark.parametrize("section", ["installed", "web"])
def test_the_client_is_read_from_either_section(section: str) -> None:
    config = client_config(
        {section: {"client_id": "id", "client_secret": SECRET, "token_uri": "https://t.example/token"}}
    )
    assert config == {"client_id": "id", "client_secret": SECRET, "token_uri": "https://t.example/token"}


def test_a_missing_token_uri_is_googles() -> None:
    config = client_config({"installed": {"client_id": "id", "client_secret": SECRET}})
    assert config["token_uri"] == "https://oauth2.googleapis.com/token"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"other": {}}, "neither an `installed` nor a `web` section"),
        ([], "neither an `installed` nor a `web` section"),
        ({"installed": {"client_id": "id"}}, "no client_secret"),
        ({"installed": {"client_secret": SECRET}}, "no client_id"),
    ],
)
def test_an_incomplete_client_is_refused_naming_what_is_missing(data: object, words: str) -> None:
    with pytest.raises(UnreadableFile, match=words) as caught:
        client_config(data)
    assert SECRET not in str(caught.value)


def test_a_client_secrets_file_that_is_not_json_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(f"client_secret={SECRET}")
    with pytest.raises(UnreadableFile, match="is not JSON") as caught:
        read_client_secrets(path)
    assert SECRET not in str(caught.value)
    path.write_text(json.dumps({"web": {"client_id": "id", "client_secret": SECRET}}))
    assert read_client_secrets(path)["web"]["client_id"] == "id"


def test_a_refresh_token_file_holds_one_line(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("1//token\n")
    assert read_refresh_token(path) == "1//token"
    path.write_text("1//token extra words\n")
    with pytest.raises(UnreadableFile, match="one line") as caught:
        read_refresh_token(path)
    assert "1//token" not in str(caught.value)
    path.write_text("\n")
    with pytest.raises(UnreadableFile, match="one line"):
        read_refresh_token(path)
