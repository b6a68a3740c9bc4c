"""A Drive destination through its use cases against the fake Drive, with Google's own client:
the probe, a revoked consent marking it as needing consent (status, `--check`, the listing), a
renewed consent clearing it, and interactive consent by the loopback redirect."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from capsule.orchestrator.destinations import load, open_secrets
from capsule.orchestrator.runtime import Runtime
from capsule.orchestrator.usecases import consent
from capsule.orchestrator.usecases import destinations as uc
from capsule.orchestrator.usecases.jobs import current_status
from tests.fakes.drive import FakeDrive
from tests.integration.helpers import Shop, in_process_settings


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDrive]:
    with FakeDrive() as drive:
        monkeypatch.setenv("CAPSULE_GDRIVE_ROOT_URL", drive.url)
        monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake's token endpoint is plain http
        yield drive


def added(shop: Shop, fake: FakeDrive) -> str:
    """Add Drive destination `drive` with a consented token; return the token."""
    token = fake.issue_refresh_token()
    uc.add_gdrive(in_process_settings(shop), "drive", fake.client_config(), token)
    return token


def redirected(url: str) -> str:
    """Play the browser: open the consent address and return where the fake's consent sends it."""

    class Stop(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(Stop)
    try:
        opener.open(url, timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 302
        return str(e.headers["Location"])
    raise AssertionError("the consent page did not redirect")


def test_a_drive_destination_passes_its_probe_on_the_real_client(shop: Shop, fake: FakeDrive) -> None:
    added(shop, fake)

    result = uc.probe_destination(in_process_settings(shop), "drive")

    assert result.ok, result.message
    assert result.message.endswith('Google Drive folder "capsule-drive"')
    assert fake.count("POST", "/token") >= 1 and fake.count("DELETE", "/drive/") == 1


def test_a_revoked_consent_marks_the_destination_until_it_is_renewed(shop: Shop, fake: FakeDrive) -> None:
    settings = in_process_settings(shop)
    token = added(shop, fake)
    fake.revoke(token)

    first = uc.probe_destination(settings, "drive")
    again = uc.probe_destination(settings, "drive")
    listed = uc.list_destinations(settings).destinations[0]
    problems = current_status(settings).problems

    assert (first.ok, first.category) == (False, "refused")
    assert "revoked or expired" in first.message
    assert "`capsule destinations renew drive`" in first.message
    assert token not in first.message and fake.client_secret not in first.message
    assert listed.needs_consent == uc.REVOKED
    [problem] = problems
    assert (problem.key, problem.reason) == ("consent-drive", "consent_needed")
    assert problem.line.startswith("drive: needs consent again: run `capsule destinations renew drive`")
    audit = [e for e in settings_events(shop) if e["type"] == "DestinationConsentNeeded"]
    assert len(audit) == 1, "a second refusal while marked records nothing more"
    assert again.category == "refused"

    uc.renew_consent(settings, "drive", fake.issue_refresh_token())

    assert uc.probe_destination(settings, "drive").ok
    assert current_status(settings).problems == []
    assert uc.list_destinations(settings).destinations[0].needs_consent is None


def test_a_disabled_destination_needing_consent_is_not_a_problem(shop: Shop, fake: FakeDrive) -> None:
    settings = in_process_settings(shop)
    fake.revoke(added(shop, fake))
    uc.probe_destination(settings, "drive")

    uc.set_enabled(settings, "drive", False)

    assert current_status(settings).problems == []


def test_consent_through_the_loopback_redirect_gives_a_token_that_works(shop: Shop, fake: FakeDrive) -> None:
    settings = in_process_settings(shop)
    pending = consent.begin(consent.client_of_file(fake.client_config()), 8123)

    answer = redirected(pending.url)
    token = consent.finish(pending, answer)
    uc.add_gdrive(settings, "drive", fake.client_config(), token)

    assert answer.startswith("http://127.0.0.1:8123/?")
    assert "code_challenge" in fake.consents[-1] and fake.consents[-1]["access_type"] == "offline"
    assert fake.consents[-1]["scope"] == "https://www.googleapis.com/auth/drive.file"
    assert pending.code_verifier not in repr(pending) and fake.client_secret not in repr(pending)
    assert open_secrets(settings, load(settings).get("drive"))[1] == token
    assert uc.probe_destination(settings, "drive").ok


def test_renewing_consent_uses_the_destinations_own_client_and_refuses_another(
    shop: Shop, fake: FakeDrive
) -> None:
    from capsule.domain.destinations import InvalidDestination

    settings = in_process_settings(shop)
    added(shop, fake)
    other = fake.client_config()
    other["installed"]["client_id"] = "someone-else.apps.googleusercontent.com"

    client = consent.client_of_destination(settings, "drive", fake.client_config())
    with pytest.raises(InvalidDestination, match="another OAuth client"):
        consent.client_of_destination(settings, "drive", other)
    plain = consent.client_of_destination(settings, "drive", None)

    assert client["installed"]["auth_uri"] == fake.auth_uri
    assert client["installed"]["client_secret"] == fake.client_secret
    assert plain["installed"]["auth_uri"] == consent.GOOGLE_AUTH_URI


def settings_events(shop: Shop) -> list[dict[str, object]]:
    from capsule.orchestrator.destinations import settings_events as read
    from capsule.orchestrator.runtime import Runtime

    runtime = Runtime(in_process_settings(shop))
    try:
        return [{"type": e.type, "data": e.data} for e in read(runtime)]
    finally:
        runtime.close()


def test_a_name_taken_or_invalid_is_refused_before_the_consent_is_asked_for(
    shop: Shop, fake: FakeDrive
) -> None:
    from capsule.domain.destinations import DestinationExists, InvalidDestination

    settings = in_process_settings(shop)
    added(shop, fake)

    with pytest.raises(DestinationExists, match="capsule destinations renew drive"):
        consent.check_can_add(settings, "drive")
    with pytest.raises(InvalidDestination):
        consent.check_can_add(settings, "My Drive")
    consent.check_can_add(settings, "drive-2")


def test_a_destination_needing_consent_raises_an_alert_that_a_renewal_clears(
    shop: Shop, fake: FakeDrive
) -> None:
    from datetime import timedelta

    from tests.integration.alert_servers import webhook_server
    from tests.integration.alerting import backup
    from tests.integration.test_alerts import NOW, alerter, document

    settings = in_process_settings(shop)
    fake.revoke(added(shop, fake))
    uc.probe_destination(settings, "drive")
    runtime = Runtime(settings)
    try:
        backup(runtime, "database", NOW)  # the local backups are fine: only the consent is wrong
        with webhook_server() as hook:
            ticker = alerter(runtime, settings)
            raised = ticker.tick(NOW, document(webhooks=(hook.url,))).raised
            uc.renew_consent(settings, "drive", fake.issue_refresh_token())
            cleared = ticker.tick(NOW + timedelta(minutes=1), document(webhooks=(hook.url,))).cleared
            bodies = list(hook.bodies)
    finally:
        runtime.close()

    assert raised == ["consent-drive"] and cleared == ["consent-drive"]
    assert (bodies[0]["reason"], bodies[0]["subject"]) == ("consent_needed", "drive")
    assert bodies[0]["summary"].startswith(
        "drive: needs consent again: run `capsule destinations renew drive`"
    )
    assert bodies[1]["summary"].startswith("drive: no longer waits for consent")


def test_a_probe_of_an_unreachable_drive_gives_up_within_seconds(shop: Shop, fake: FakeDrive) -> None:
    import time

    settings = in_process_settings(shop)
    client = fake.client_config()
    client["installed"]["token_uri"] = "http://127.0.0.1:9/token"  # the discard port: nothing answers
    uc.add_gdrive(settings, "drive", client, fake.issue_refresh_token())

    started = time.monotonic()
    result = uc.probe_destination(settings, "drive")

    assert (result.ok, result.category) == (False, "unavailable")
    assert "cannot be reached from this machine" in result.message
    assert "(the connection failed (ConnectionRefusedError), 3 tries)" in result.message
    assert time.monotonic() - started < 10, "a person waits for a probe: it does not retry for minutes"
