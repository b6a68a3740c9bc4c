"""The destinations decider: given the events so far, when a command, then the events it makes or
the error that says what to do."""

from __future__ import annotations

import pytest

from capsule.domain.destinations import (
    AddDrive,
    AddFolder,
    DestinationExists,
    Destinations,
    InvalidDestination,
    MarkConsentNeeded,
    Remove,
    RenewConsent,
    SetEnabled,
    UnknownDestination,
    decide,
    replay,
)
from capsule.domain.events import (
    DestinationAdded,
    DestinationConsentNeeded,
    DestinationConsentRenewed,
    DestinationDisabled,
    DestinationEnabled,
    DestinationRemoved,
    Event,
)

SEALED = "sealed:v1:AAAA"
FORBIDDEN = (("the local repository", "/srv/shop/data/backups"), ("Capsule's home", "/srv/shop/data/capsule"))


def nas(change_id: str = "c1") -> DestinationAdded:
    return DestinationAdded(job_id=change_id, name="nas", kind="folder", path="/mnt/nas/capsule")


def drive(name: str = "drive", refresh_token: str = SEALED) -> AddDrive:
    return AddDrive(
        "c2", name, "capsule-shop", "id.apps.example", "https://oauth2.example/token", SEALED, refresh_token
    )


def given(*events: Event) -> Destinations:
    return replay(events)


def test_a_folder_destination_is_added_with_its_path():
    events = decide(given(), AddFolder("c1", "nas", "/mnt/nas/capsule/", FORBIDDEN))
    assert events == [nas()]
    assert given(*events).get("nas").path == "/mnt/nas/capsule"


def test_a_drive_destination_keeps_only_sealed_secrets():
    [event] = decide(given(), drive())
    assert isinstance(event, DestinationAdded)
    assert (event.kind, event.folder_name, event.client_id) == ("gdrive", "capsule-shop", "id.apps.example")
    assert event.client_secret == event.refresh_token == SEALED


def test_a_secret_in_plain_text_is_refused_by_the_decider_and_by_the_event():
    with pytest.raises(InvalidDestination, match="sealed"):
        decide(given(), drive(refresh_token="1//plain-refresh-token"))
    with pytest.raises(ValueError, match="sealed"):
        DestinationConsentRenewed(job_id="c", name="drive", refresh_token="1//plain-refresh-token")


def test_a_duplicate_name_is_refused_saying_how_to_free_it():
    with pytest.raises(DestinationExists, match="capsule destinations remove nas"):
        decide(given(nas()), AddFolder("c2", "nas", "/media/usb/capsule"))


@pytest.mark.parametrize("name", ["NAS", "nas_1", "-nas", "", "a" * 33, "nas share", "é"])
def test_a_name_outside_the_rule_is_refused_naming_the_rule(name: str):
    with pytest.raises(InvalidDestination, match="lowercase letters, digits and `-`, at most 32"):
        decide(given(), AddFolder("c1", name, "/mnt/nas/capsule"))


def test_a_name_of_32_characters_is_taken():
    assert decide(given(), AddFolder("c1", "a" * 32, "/mnt/nas/capsule"))


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("mnt/nas", "must be absolute"),
        ("./nas", "must be absolute"),
        ("/mnt/nas/../srv", "without it"),
        ("/", "cannot be `/`"),
        ("/srv/shop/data/backups", "inside the local repository"),
        ("/srv/shop/data/backups/copy", "inside the local repository"),
        ("/srv/shop/data/capsule/nas", "inside Capsule's home"),
        ("/srv/shop", "holds the local repository"),
    ],
)
def test_a_folder_path_that_cannot_hold_an_off_site_copy_is_refused(path: str, words: str):
    with pytest.raises(InvalidDestination, match=words):
        decide(given(), AddFolder("c1", "nas", path, FORBIDDEN))


def test_a_folder_beside_the_repository_is_taken():
    assert decide(given(), AddFolder("c1", "nas", "/srv/shop/data/backups-copy", FORBIDDEN))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"folder_name": "a/b"}, "without `/`"),
        ({"client_id": " "}, "no client_id"),
        ({"token_uri": "http://oauth2.example/token"}, "not an https:// address"),
        ({"token_uri": "http://127.0.0.1.example/token"}, "not an https:// address"),
    ],
)
def test_a_drive_configuration_that_cannot_work_is_refused(change: dict[str, str], words: str):
    fields = {**drive().__dict__, **change}
    with pytest.raises(InvalidDestination, match=words):
        decide(given(), AddDrive(**fields))


def test_removing_an_unknown_destination_lists_the_names_there_are():
    state = given(nas(), *decide(given(nas()), drive("offsite")))
    with pytest.raises(UnknownDestination, match=r"the destinations: nas, offsite$"):
        decide(state, Remove("c3", "usb"))


def test_removing_when_there_is_none_says_how_to_add_one():
    with pytest.raises(UnknownDestination, match="capsule destinations add folder NAME PATH"):
        decide(given(), Remove("c3", "usb"))


def test_a_removed_destination_is_gone_and_its_name_free_again():
    events = decide(given(nas()), Remove("c2", "nas"))
    assert events == [DestinationRemoved(job_id="c2", name="nas")]
    assert given(nas(), *events).names == []
    assert decide(given(nas(), *events), AddFolder("c3", "nas", "/media/usb/capsule"))


def test_renewing_consent_replaces_the_sealed_refresh_token():
    state = given(*decide(given(), drive()))
    events = decide(state, RenewConsent("c3", "drive", "sealed:v1:BBBB"))
    assert events == [DestinationConsentRenewed(job_id="c3", name="drive", refresh_token="sealed:v1:BBBB")]
    renewed = replay([*decide(given(), drive()), *events]).get("drive")
    assert renewed.refresh_token == "sealed:v1:BBBB"
    assert renewed.client_secret == SEALED


def test_a_folder_has_no_consent_to_renew():
    with pytest.raises(InvalidDestination, match="only a Google Drive destination"):
        decide(given(nas()), RenewConsent("c2", "nas", SEALED))


def test_disabling_and_enabling_record_only_a_change():
    assert decide(given(nas()), SetEnabled("c2", "nas", enabled=True)) == []
    off = decide(given(nas()), SetEnabled("c2", "nas", enabled=False))
    assert off == [DestinationDisabled(job_id="c2", name="nas")]
    assert not given(nas(), *off).get("nas").enabled
    on = decide(given(nas(), *off), SetEnabled("c3", "nas", enabled=True))
    assert on == [DestinationEnabled(job_id="c3", name="nas")]
    assert given(nas(), *off, *on).get("nas").enabled


def test_a_token_address_on_this_machines_loopback_may_be_plain_http():
    # A local proxy, or a test server: nothing leaves the machine unencrypted.
    for uri in ("http://127.0.0.1:8080/token", "http://localhost/token", "http://[::1]:9/token"):
        fields = {**drive().__dict__, "token_uri": uri}
        assert decide(given(), AddDrive(**fields))


def added_drive() -> Event:
    return decide(given(), drive())[0]


def test_a_refused_authorization_marks_the_drive_destination_as_needing_consent_once():
    state = given(added_drive())
    events = decide(state, MarkConsentNeeded("c3", "drive", "the authorization was revoked or expired"))
    assert events == [
        DestinationConsentNeeded(job_id="c3", name="drive", reason="the authorization was revoked or expired")
    ]
    marked = given(added_drive(), *events)
    assert marked.get("drive").needs_consent == "the authorization was revoked or expired"
    assert decide(marked, MarkConsentNeeded("c4", "drive", "again")) == []


def test_a_renewed_consent_clears_the_mark():
    needed = DestinationConsentNeeded(job_id="c3", name="drive", reason="revoked")
    renewed = DestinationConsentRenewed(job_id="c4", name="drive", refresh_token="sealed:v1:BBBB")
    assert given(added_drive(), needed, renewed).get("drive").needs_consent is None


def test_a_destination_removed_meanwhile_is_not_marked():
    gone = DestinationRemoved(job_id="c3", name="drive")
    assert decide(given(added_drive(), gone), MarkConsentNeeded("c4", "drive", "revoked")) == []


def test_a_consent_reason_holding_a_token_is_refused_by_the_event():
    with pytest.raises(ValueError, match="secret"):
        DestinationConsentNeeded(job_id="c3", name="drive", reason="invalid_grant for 1//0gAbcDefToken")


def test_a_paused_destination_waits_until_its_time_and_a_resume_lifts_the_pause():
    from datetime import UTC, datetime, timedelta

    from capsule.domain.destinations import MarkPaused, Resume

    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    added = decide(given(), drive())
    paused = decide(given(*added), MarkPaused("c3", "drive", now + timedelta(hours=6), "rate limited"))
    state = given(*added, *paused).get("drive")

    assert state.paused_at(now) and not state.paused_at(now + timedelta(hours=6))
    assert state.pause_reason == "rate limited"
    resumed = decide(given(*added, *paused), Resume("c4", "drive", now))
    assert not given(*added, *paused, *resumed).get("drive").paused_at(now)
    assert decide(given(*added, *paused, *resumed), Resume("c5", "drive", now)) == []  # nothing to lift
    assert decide(given(), MarkPaused("c6", "gone", now, "rate limited")) == []  # removed meanwhile


def test_a_bandwidth_limit_is_for_drive_destinations_at_or_above_the_floor():
    from capsule.domain.destinations import SetBandwidth

    events = [*decide(given(), drive()), nas()]
    limited = decide(given(*events), SetBandwidth("c3", "drive", 2 * 1024 * 1024))

    assert given(*events, *limited).get("drive").bandwidth == 2 * 1024 * 1024
    assert decide(given(*events, *limited), SetBandwidth("c4", "drive", 2 * 1024 * 1024)) == []
    with pytest.raises(InvalidDestination, match="at least"):
        decide(given(*events), SetBandwidth("c5", "drive", 1024))
    with pytest.raises(InvalidDestination, match="folder destination"):
        decide(given(*events), SetBandwidth("c6", "nas", 2 * 1024 * 1024))
