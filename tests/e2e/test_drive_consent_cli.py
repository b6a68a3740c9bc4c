"""Consent for a Drive destination as an admin gives it on a server without a browser: a real
`capsule` process prints the consent address; the test plays the browser against the fake Drive's
consent page, and the answer comes back by the loopback redirect or pasted on standard input. Then
a revoked consent: `destinations test`, `list`, `status` and `status --check` say so, backups go on,
and `renew` gives a token that works (that it clears the mark is tested through the use cases)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.drive import FakeDrive
from tests.integration.helpers import CAPSULE, Shop


@pytest.fixture
def fake() -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        yield drive


def drive_env(fake: FakeDrive) -> dict[str, str | None]:
    # The fake's token endpoint is plain http, which oauthlib refuses unless told it is a test.
    return {"CAPSULE_GDRIVE_ROOT_URL": fake.url, "OAUTHLIB_INSECURE_TRANSPORT": "1"}


def client_file(fake: FakeDrive, folder: Path) -> Path:
    path = folder / "client_secret.json"
    path.write_text(json.dumps(fake.client_config()))
    return path


SAID: dict[int, list[str]] = {}
"""Standard error of each running process, by process id, read as it comes by a thread."""


def start(shop: Shop, fake: FakeDrive, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Run `capsule ARGS` and return it with the consent address it printed."""
    proc = subprocess.Popen(
        [*CAPSULE, *args],
        cwd=shop.root,
        env=shop.env(drive_env(fake)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = SAID.setdefault(proc.pid, [])
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    READERS[proc.pid] = reader
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (reader.is_alive() or lines):
        found = [line for line in list(lines) if line.startswith("  http")]
        if found:
            return proc, found[0].strip()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no consent address printed: {''.join(lines)}")


READERS: dict[int, threading.Thread] = {}


def browse(url: str) -> str:
    """The browser: open the consent page and return the address Google's redirect leads to."""

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        urllib.request.build_opener(Keep).open(url, timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 302, e
        return str(e.headers["Location"])
    raise AssertionError("the consent page did not redirect")


def finish(proc: subprocess.Popen[str], pasted: str | None = None) -> tuple[int, str, str]:
    assert proc.stdin is not None and proc.stdout is not None
    if pasted is not None:
        proc.stdin.write(pasted + "\n")
    proc.stdin.close()
    out = proc.stdout.read()
    proc.wait(timeout=60)
    READERS.pop(proc.pid).join(timeout=10)
    return proc.returncode, out, "".join(SAID.pop(proc.pid))


@pytest.mark.slow
def test_consent_comes_back_through_the_loopback_redirect_and_the_destination_works(
    shop: Shop, fake: FakeDrive, tmp_path: Path
) -> None:
    client = client_file(fake, tmp_path)
    proc, url = start(shop, fake, "destinations", "add", "gdrive", "drive", "--client-secrets", str(client))

    redirect = browse(url)
    with urllib.request.urlopen(redirect, timeout=10) as page:  # the browser follows it to Capsule
        shown = page.read().decode()
    code, out, err = finish(proc)
    tested = shop.run("destinations", "test", "drive", env=drive_env(fake), expect=0)

    assert code == 0, err
    assert redirect.startswith("http://127.0.0.1:")
    assert "You can close this tab" in shown
    assert out.startswith("Added the Google Drive destination drive: Google Drive folder capsule-drive.")
    assert "ssh -L" in err and "paste it here" in err
    assert tested.stdout.startswith("drive: ok, wrote, listed, read back and removed")
    for secret in (*fake.refresh_tokens, fake.client_secret):
        assert secret not in out + err + tested.stdout + tested.stderr


@pytest.mark.slow
def test_a_revoked_consent_is_reported_everywhere_and_a_pasted_renewal_clears_it(
    shop: Shop, fake: FakeDrive, tmp_path: Path
) -> None:
    env = drive_env(fake)
    client = client_file(fake, tmp_path)
    proc, url = start(shop, fake, "destinations", "add", "gdrive", "drive", "--client-secrets", str(client))
    added = finish(proc, pasted=browse(url))  # the browser was elsewhere: its address is pasted
    assert added[0] == 0, added[2]
    for token in list(fake.refresh_tokens):
        fake.revoke(token)

    refused = shop.run("destinations", "test", "drive", env=env, expect=1)
    listed = shop.run("destinations", "list", env=env, expect=0)
    status = shop.run("status", env=env, expect=0)
    check = shop.run("status", "--check", env=env, expect=5)
    backup = shop.run("backup", "--kind", "database", env=env, expect=0)

    renew = ["destinations", "renew", "drive", "--client-secrets", str(client)]
    proc, url = start(shop, fake, *renew)
    code = dict(p.split("=", 1) for p in browse(url).split("?", 1)[1].split("&"))["code"]
    renewed = finish(proc, pasted=code)  # the bare code as the address bar shows it, `%2F` and all
    after = shop.run("destinations", "test", "drive", env=env, expect=0)

    assert "revoked or expired" in refused.stderr
    assert "`capsule destinations renew drive`" in refused.stderr
    needs = "drive: needs consent again: run `capsule destinations renew drive`"
    assert needs in listed.stdout
    assert needs in status.stdout
    assert needs in check.stdout
    assert backup.returncode == 0
    assert renewed[0] == 0, renewed[2]
    assert renewed[1].startswith("Renewed the consent of the Google Drive destination drive")
    assert after.stdout.startswith("drive: ok")
    outputs = [refused, listed, status, check, backup, after]
    texts = [t for p in outputs for t in (p.stdout, p.stderr)] + [*added[1:], *renewed[1:]]
    for secret in (*fake.refresh_tokens, fake.client_secret):
        assert not [t for t in texts if secret in t]


@pytest.mark.slow
def test_a_consent_answer_for_another_consent_is_refused(shop: Shop, fake: FakeDrive, tmp_path: Path) -> None:
    client = client_file(fake, tmp_path)
    proc, url = start(shop, fake, "destinations", "add", "gdrive", "drive", "--client-secrets", str(client))
    stale = browse(url).replace("state=", "state=x")

    code, _, err = finish(proc, pasted=stale)

    assert code == 1
    assert "its state differs" in err and "start the consent again" in err
    assert shop.run("destinations", "list", expect=0).stdout.startswith("No destination yet")
