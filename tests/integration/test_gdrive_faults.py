"""What the Drive backend does when Google Drive fails: tried against the fake Drive server with
Google's real client libraries, every wait of the backoff recorded instead of slept."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from capsule.adapters.errors import DestinationNeedsConsent, DiskFull, ObjectNotFound, StorageUnavailable
from capsule.adapters.repository.backends.gdrive import DriveBackend, DriveCredentials, open_drive
from capsule.adapters.repository.backends.gdrive_retry import UNREACHABLE_ATTEMPTS, Backoff
from capsule.domain.errors import Category
from capsule.domain.sizes import DEFAULT_PACK_SIZE
from tests.fakes.drive import FakeDrive, MemorySessions, Sleeps

CHUNK = 256 * 1024
PACK = "ab" * 32


@pytest.fixture(scope="module")
def server() -> Iterator[FakeDrive]:
    with FakeDrive() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeDrive) -> FakeDrive:
    server.reset()
    server.page_size = 1000
    return server


def credentials(fake: FakeDrive) -> DriveCredentials:
    return fake.credentials()


def drive(fake: FakeDrive, sleeps: Sleeps | None = None, **options: object) -> DriveBackend:
    options.setdefault("chunk_size", CHUNK)
    return open_drive("shop", credentials(fake), root_url=fake.url, sleep=sleeps or Sleeps(), **options)  # type: ignore[arg-type]


def pack(size: int = 4 * CHUNK + 1000) -> bytes:
    return os.urandom(size)


def chunk_bytes(fake: FakeDrive) -> int:
    """Bytes the server read in upload PUTs (the chunks, resent ones included)."""
    return sum(r.received for r in fake.requests if r.method == "PUT")


def test_retries_server_errors_and_rate_limits_then_succeeds(fake: FakeDrive) -> None:
    sleeps = Sleeps()
    backend = drive(fake, sleeps)
    data = pack()
    fake.fail(2, "server_error", method="PUT")
    fake.fail(1, "too_many_requests", method="PUT")
    fake.fail(1, "rate_limit", method="PUT")
    fake.fail(1, "user_rate_limit", method="PUT")
    backend.write("data", PACK, data)
    assert backend.read("data", PACK) == data
    assert len(sleeps.waits) == 5
    assert all(0 <= w <= 64 for w in sleeps.waits)
    assert [f.name for f in fake.named(f"data-{PACK}")] == [f"data-{PACK}"]


def test_a_failed_read_is_tried_again(fake: FakeDrive) -> None:
    backend = drive(fake)
    backend.write("index", PACK, b"index bytes")
    fake.fail(1, "server_error", method="GET", path="/drive/v3/files/")
    fake.fail(1, "drop", method="GET", path="/drive/v3/files/")
    assert backend.read("index", PACK) == b"index bytes"


def test_gives_up_after_its_attempts_with_an_error_worth_trying_later(fake: FakeDrive) -> None:
    sleeps = Sleeps()
    backend = drive(fake, sleeps, backoff=Backoff(attempts=4))
    fake.fail(100, "server_error", method="PUT")
    with pytest.raises(StorageUnavailable) as caught:
        backend.write("data", PACK, pack())
    assert caught.value.retryable and caught.value.category is Category.UNAVAILABLE
    assert "4 times" in str(caught.value) and "503" in str(caught.value)
    assert len(sleeps.waits) == 3
    assert list(backend.list("data")) == []


def test_a_rate_limit_that_persists_says_the_daily_upload_cap_is_likely_reached(fake: FakeDrive) -> None:
    backend = drive(fake, backoff=Backoff(attempts=5))
    fake.fail(100, "user_rate_limit", method="PUT")
    with pytest.raises(StorageUnavailable, match="daily upload cap") as caught:
        backend.write("data", PACK, pack())
    assert caught.value.retryable


def test_the_backoff_grows_and_stays_under_its_cap() -> None:
    backoff = Backoff(attempts=10, base=1.0, cap=8.0)
    assert [backoff.delay(n, lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert backoff.delay(3, lambda: 0.25) == 1.0, "full jitter: a random share of the ceiling"


def test_resumes_from_the_servers_offset_after_a_server_error(fake: FakeDrive) -> None:
    backend = drive(fake)
    data = pack()
    fake.fail(1, "server_error", method="PUT", skip=2)  # the third chunk
    backend.write("data", PACK, data)
    assert backend.read("data", PACK) == data
    queries = [r for r in fake.requests if r.content_range.startswith("bytes */")]
    assert len(queries) == 1 and queries[0].status == 308, "it asked the server where to go on"
    assert chunk_bytes(fake) <= len(data) + CHUNK
    assert fake.count("POST", "/upload/") == 1, "the same upload went on"


@pytest.mark.parametrize("chunk", [CHUNK, 4 * CHUNK], ids=["server-kept-none", "server-kept-half"])
def test_resumes_upload_after_drive_drops_connection(fake: FakeDrive, chunk: int) -> None:
    backend = drive(fake, chunk_size=chunk)
    data = pack(3 * chunk + 77)
    fake.fail(1, "drop", method="PUT", skip=1)  # the server reads half the second chunk, then resets
    backend.write("data", PACK, data)
    assert backend.read("data", PACK) == data
    dropped = [r for r in fake.requests if r.status == 0]
    assert len(dropped) == 1 and 0 < dropped[0].received < chunk
    resent = chunk_bytes(fake) - len(data)
    assert resent <= chunk, f"{resent} bytes were sent twice"
    assert fake.count("POST", "/upload/") == 1


def test_an_expired_upload_session_starts_the_upload_again(fake: FakeDrive) -> None:
    backend = drive(fake)
    data = pack()
    fake.fail(1, "expire_session", skip=2)
    backend.write("data", PACK, data)
    assert backend.read("data", PACK) == data
    assert fake.count("POST", "/upload/") == 2, "a second session was opened"
    assert len(fake.named(f"data-{PACK}")) == 1
    assert fake.sessions and all(s.file_id is None or s.file_id in fake.files for s in fake.sessions.values())


def test_resumes_an_upload_after_a_restart_sending_at_most_one_chunk_again(fake: FakeDrive) -> None:
    sessions = MemorySessions()
    data = pack(8 * CHUNK + 5)
    first = drive(fake, sessions=sessions, backoff=Backoff(attempts=1))
    fake.fail(1, "drop", method="PUT", skip=4)
    with pytest.raises(StorageUnavailable):  # the process stops here, as if it were killed
        first.write("data", PACK, data)
    assert sessions.load("data", PACK) is not None

    restarted = drive(fake, sessions=sessions)  # a new process: new client, new connection
    restarted.write("data", PACK, data)
    assert restarted.read("data", PACK) == data
    assert fake.count("POST", "/upload/") == 1, "the saved session was used, not a new one"
    sent_again = chunk_bytes(fake) - len(data)
    assert sent_again <= CHUNK, f"{sent_again} bytes were sent twice"
    first_put_after_restart = next(r for r in fake.requests if r.received == 0 and r.method == "PUT")
    assert first_put_after_restart.content_range.startswith("bytes */")
    assert sessions.load("data", PACK) is None and ("data", PACK) in sessions.cleared


def test_a_process_killed_with_a_chunk_half_sent_leaves_the_server_what_arrived(fake: FakeDrive) -> None:
    sessions = MemorySessions()
    data = pack(4 * CHUNK)
    first = drive(fake, sessions=sessions, backoff=Backoff(attempts=1))
    fake.fail(1, "stall", method="PUT", skip=1)  # the second chunk: half read, then held
    failed: list[BaseException] = []

    def write() -> None:
        try:
            first.write("data", PACK, data)
        except StorageUnavailable as e:
            failed.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    assert fake.stalled.wait(timeout=60), "the chunk was held"
    fake.release()  # the connection is reset, as when the process dies
    writer.join(timeout=60)
    assert failed and not fake.named(f"data-{PACK}")

    drive(fake, sessions=sessions).write("data", PACK, data)
    assert drive(fake).read("data", PACK) == data
    assert chunk_bytes(fake) - len(data) <= CHUNK


def test_a_one_chunk_pack_killed_half_sent_goes_on_after_a_restart_from_what_arrived(fake: FakeDrive) -> None:
    sessions = MemorySessions()
    data = pack(6 * 1024 * 1024)  # over the multipart limit, one chunk of the default size
    first = open_drive("shop", credentials(fake), root_url=fake.url, sleep=Sleeps(), sessions=sessions,
                       backoff=Backoff(attempts=1))  # fmt: skip
    fake.fail(1, "stall", method="PUT")

    def write() -> None:
        with pytest.raises(StorageUnavailable):  # the process stops here, as if it were killed
            first.write("data", PACK, data)

    writer = threading.Thread(target=write)
    writer.start()
    assert fake.stalled.wait(timeout=60)
    assert sessions.load("data", PACK) is not None, "the session was kept before its first byte went"
    fake.release()
    writer.join(timeout=60)

    restarted = open_drive("shop", credentials(fake), root_url=fake.url, sleep=Sleeps(), sessions=sessions)
    restarted.write("data", PACK, data)
    assert restarted.read("data", PACK) == data
    assert fake.count("POST", "/upload/") == 1, "the kept session went on"
    assert 0 <= chunk_bytes(fake) - len(data) < 256 * 1024, (
        "only what had not arrived in whole was sent again"
    )
    assert sessions.load("data", PACK) is None


def test_a_saved_session_that_expired_meanwhile_starts_a_new_upload(fake: FakeDrive) -> None:
    sessions = MemorySessions()
    sessions.save("data", PACK, fake.url + "upload/drive/v3/files?uploadType=resumable&upload_id=gone", 9)
    backend = drive(fake, sessions=sessions)
    data = pack(2 * CHUNK)
    backend.write("data", PACK, data)
    assert backend.read("data", PACK) == data
    assert sessions.load("data", PACK) is None


def test_a_revoked_authorization_needs_consent_and_no_secret_is_told(
    fake: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    sleeps = Sleeps()
    given = credentials(fake)
    backend = open_drive("shop", given, root_url=fake.url, sleep=sleeps)
    backend.write("index", PACK, b"before")
    fake.revoke(given.refresh_token)
    fake.expire_access_tokens()
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs, pytest.raises(DestinationNeedsConsent) as caught:
        backend.write("index", PACK, b"after")
    error = caught.value
    assert error.category is Category.REFUSED
    assert "revoked or expired" in str(error) and "capsule destinations add gdrive" in str(error)
    told = " ".join([str(error), repr(error), str(error.__cause__), caplog.text, repr(logs)])
    for secret in (given.refresh_token, given.client_secret, *fake.issued):
        assert secret not in told
    assert "hidden" in repr(given) and given.refresh_token not in repr(given)
    assert sleeps.waits == [], "a refused authorization is not tried again"


def test_an_invalid_grant_on_refresh_needs_consent(fake: FakeDrive) -> None:
    backend = drive(fake)
    fake.fail(1, "invalid_grant")
    with pytest.raises(DestinationNeedsConsent):
        backend.create_layout()


def test_an_expired_access_token_is_refreshed_and_the_request_repeated(fake: FakeDrive) -> None:
    backend = drive(fake)
    backend.write("snapshots", PACK, b"snapshot")
    tokens_before = fake.count("POST", "/token")
    fake.expire_access_tokens()
    assert backend.read("snapshots", PACK) == b"snapshot"
    assert fake.count("POST", "/token") == tokens_before + 1
    assert any(r.status == 401 for r in fake.requests)


def test_a_full_drive_is_a_full_disk_with_what_to_do(fake: FakeDrive) -> None:
    sleeps = Sleeps()
    backend = drive(fake, sleeps)
    backend.create_layout()
    fake.fail(1, "quota", method="POST", path="/upload/")
    with pytest.raises(DiskFull, match="out of storage: free space in Drive") as caught:
        backend.write("index", PACK, b"index")
    assert caught.value.category is Category.UNAVAILABLE
    assert sleeps.waits == []


def test_listing_pages_through_every_file(fake: FakeDrive) -> None:
    backend = drive(fake)
    names = {f"{i:064x}" for i in range(11)}
    for name in names:
        backend.write("index", name, b"i")
    backend.write("snapshots", PACK, b"s")
    fake.page_size = 3
    before = len(fake.requests)
    assert set(backend.list("index")) == names
    pages = [r for r in fake.requests[before:] if r.method == "GET" and r.path == "/drive/v3/files"]
    assert len(pages) == 4 and sum("pageToken" in r.query for r in pages) == 3


def test_a_reader_holding_an_old_file_id_finds_the_object_that_replaced_it(fake: FakeDrive) -> None:
    reader, writer = drive(fake), drive(fake)  # two processes on one Drive folder
    writer.write("locks", PACK, b"first")
    assert reader.read("locks", PACK) == b"first"  # the reader now caches the first file's id
    writer.write("locks", PACK, b"second")
    assert reader.read("locks", PACK) == b"second"
    assert reader.stat("locks", PACK).size == len(b"second")
    assert len(fake.named(f"locks-{PACK}")) == 1


def test_objects_are_files_in_one_folder_tagged_with_kind_and_name(fake: FakeDrive) -> None:
    backend = drive(fake)
    backend.write("config", "config", b"{}")
    backend.write("data", PACK, b"pack")
    (folder,) = fake.named("shop")
    assert folder.mime_type == "application/vnd.google-apps.folder"
    assert folder.app_properties == {"capsule": "repository"}
    (stored,) = fake.named(f"data-{PACK}")
    assert stored.parents == [folder.id]
    assert stored.app_properties == {"capsule": "1", "kind": "data", "name": PACK}
    assert [f.parents for f in fake.named("config")] == [[folder.id]]


def test_small_objects_and_small_packs_go_in_one_request_and_larger_packs_by_resumable_upload(
    fake: FakeDrive,
) -> None:
    backend = drive(fake)
    backend.create_layout()
    backend.write("index", PACK, b"small index")
    backend.write("data", PACK, b"small pack")  # the last pack of a backup is often this small
    assert [r.query.get("uploadType") for r in fake.requests if r.path.startswith("/upload/")] == [
        "multipart",
        "multipart",
    ]
    backend.write("data", "cd" * 32, pack(CHUNK + 1))
    assert fake.count("POST", "/upload/") == 3 and fake.count("PUT", "/upload/") == 2
    assert backend.read("data", PACK) == b"small pack"


def test_the_bandwidth_limit_paces_an_upload(fake: FakeDrive) -> None:
    sleeps = Sleeps()
    backend = drive(fake, sleeps, bandwidth_limit=CHUNK, clock=sleeps.clock)
    backend.write("data", PACK, pack(4 * CHUNK))
    # one second per chunk of CHUNK bytes, waited before each chunk after the first
    assert sleeps.waits == pytest.approx([1.0, 1.0, 1.0])


def test_under_a_bandwidth_limit_a_chunk_holds_a_few_seconds_of_it(fake: FakeDrive) -> None:
    sleeps = Sleeps()
    mib = 1024 * 1024
    backend = open_drive("shop", credentials(fake), root_url=fake.url, sleep=sleeps, clock=sleeps.clock,
                         bandwidth_limit=mib)  # fmt: skip
    backend.write("data", PACK, pack(6 * mib))  # one chunk of the default size without the limit
    assert fake.count("PUT", "/upload/") == 2, "chunks of four seconds of the limit"
    assert sleeps.waits == pytest.approx([4.0])


def test_the_root_url_may_come_from_the_environment(fake: FakeDrive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSULE_GDRIVE_ROOT_URL", fake.url)
    backend = open_drive("elsewhere", credentials(fake))
    backend.write("keys", PACK, b"key")
    assert [f.name for f in fake.named(f"keys-{PACK}")] == [f"keys-{PACK}"]


def test_a_chunk_size_drive_would_refuse_is_refused_first(fake: FakeDrive) -> None:
    with pytest.raises(ValueError, match="multiple of 262144"):
        drive(fake, chunk_size=1000 * 1000)


@pytest.mark.parametrize(
    "payload",
    [b"\r\n\r\n" + os.urandom(3000), os.urandom(2000) + b"\r\n", b"\n\n--x\n\n", b"", os.urandom(CHUNK)],
    ids=["blank-line-first", "ends-with-crlf", "looks-like-mime", "empty", "exactly-one-chunk"],
)
def test_small_objects_of_any_bytes_read_back_as_written(fake: FakeDrive, payload: bytes) -> None:
    backend = drive(fake)
    backend.write("index", PACK, payload)
    assert backend.read("index", PACK) == payload
    assert backend.size("index", PACK) == len(payload)


def test_a_pack_of_two_chunks_costs_three_requests(fake: FakeDrive) -> None:
    backend = drive(fake)
    backend.create_layout()
    before = len(fake.requests)
    backend.write("data", PACK, pack(2 * CHUNK))
    made = [(r.method, r.path) for r in fake.requests[before:]]
    assert made == [
        ("POST", "/upload/drive/v3/files"),
        ("PUT", "/upload/drive/v3/files"),
        ("PUT", "/upload/drive/v3/files"),
    ], "open the session and two chunks: a pack's name is its content's, so no older file is looked for"


def test_a_pack_of_the_default_size_and_the_check_of_its_size_cost_two_requests(
    fake: FakeDrive,
) -> None:
    backend = open_drive("shop", credentials(fake), root_url=fake.url, sleep=Sleeps())
    backend.create_layout()
    data = pack(DEFAULT_PACK_SIZE + 12345)  # a pack goes a little past its target size
    before = len(fake.requests)
    backend.write("data", PACK, data)
    assert backend.size("data", PACK) == len(data)  # what a copy checks after each write
    made = [(r.method, r.path, r.status) for r in fake.requests[before:]]
    assert made == [("POST", "/upload/drive/v3/files", 200), ("PUT", "/upload/drive/v3/files", 200)]
    assert backend.size("data", PACK) == len(data), "a later size asks Drive"
    assert len(fake.requests) == before + 3


def test_an_object_over_the_multipart_limit_goes_by_resumable_upload_though_it_fits_a_chunk(
    fake: FakeDrive,
) -> None:
    backend = open_drive("shop", credentials(fake), root_url=fake.url, sleep=Sleeps())
    backend.create_layout()
    backend.write("index", PACK, b"i" * (5 * 1000 * 1000))
    backend.write("snapshots", PACK, b"s" * (5 * 1000 * 1000 + 1))
    uploads = [(r.method, r.query.get("uploadType")) for r in fake.requests if r.path.startswith("/upload/")]
    assert uploads == [("POST", "multipart"), ("POST", "resumable"), ("PUT", "resumable")]
    assert backend.read("snapshots", PACK) == b"s" * (5 * 1000 * 1000 + 1)


def test_a_content_named_object_written_twice_reads_as_the_newest_and_is_removed_whole(
    fake: FakeDrive,
) -> None:
    writer, reader = drive(fake), drive(fake)
    writer.write("index", PACK, b"same bytes")
    writer.write("index", PACK, b"same bytes")  # a copy run again after a lost answer
    assert len(fake.named(f"index-{PACK}")) == 2
    assert list(reader.list("index")) == [PACK]
    assert reader.read("index", PACK) == b"same bytes"
    reader.remove("index", PACK)
    assert fake.named(f"index-{PACK}") == [] and not writer.exists("index", PACK)
    with pytest.raises(ObjectNotFound):
        reader.size("index", PACK)


def test_a_saved_session_the_server_refuses_starts_a_new_upload(fake: FakeDrive) -> None:
    sessions = MemorySessions()
    first = drive(fake, sessions=sessions, backoff=Backoff(attempts=1))
    fake.fail(1, "drop", method="PUT", skip=1)
    with pytest.raises(StorageUnavailable):
        first.write("data", PACK, pack(4 * CHUNK))
    assert sessions.load("data", PACK) is not None
    other = pack(3 * CHUNK)  # not the bytes the saved session was opened for
    drive(fake, sessions=sessions).write("data", PACK, other)
    assert drive(fake).read("data", PACK) == other
    assert fake.count("POST", "/upload/") == 2


def test_a_folder_deleted_in_drive_is_made_again_by_the_next_write(fake: FakeDrive) -> None:
    backend = drive(fake)
    backend.write("index", PACK, b"first")
    (folder,) = fake.named("shop")
    del fake.files[folder.id]  # the owner deleted it in Drive's web page, with what it held
    for gone in [f.id for f in fake.files.values() if folder.id in f.parents]:
        del fake.files[gone]
    backend.write("index", PACK, b"again")
    backend.write("data", PACK, pack(2 * CHUNK))
    assert backend.read("index", PACK) == b"again"
    assert len(fake.named("shop")) == 1


def test_processes_making_the_folder_at_once_all_use_the_oldest(fake: FakeDrive) -> None:
    backends = [drive(fake) for _ in range(4)]
    threads = [threading.Thread(target=b.create_layout) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.named("shop")) == 1
    for i, backend in enumerate(backends):
        backend.write("locks", f"{i:032x}", b"lock")
    assert all(len(list(b.list("locks"))) == 4 for b in backends)


def test_no_secret_reaches_the_logs_of_a_run_with_refreshes_and_retries(
    fake: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    given = credentials(fake)
    with capture_logs() as logs:
        backend = open_drive("shop", given, root_url=fake.url, chunk_size=CHUNK, sleep=Sleeps())
        fake.fail(1, "server_error", method="PUT")
        backend.write("data", PACK, pack(2 * CHUNK))
        fake.expire_access_tokens()
        assert len(backend.read("data", PACK)) == 2 * CHUNK
    told = caplog.text + repr(logs)
    assert "trying again" in told, "the retry was logged"
    assert len(fake.issued) >= 2, "a token was refreshed during the run"
    for secret in (given.refresh_token, given.client_secret, *fake.issued):
        assert secret not in told


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("unreachable", ["drive", "drive and its token endpoint"])
def test_a_drive_that_cannot_be_reached_is_given_up_after_a_few_quick_tries(
    fake: FakeDrive, unreachable: str
) -> None:
    # No network (or a proxy that is down) refuses every connection at once: eight tries over a
    # minute made each `capsule backup` wait that long for a copy that could not happen. A
    # connection dropped in the middle of a request is still tried the full number of times.
    nowhere = f"http://127.0.0.1:{closed_port()}/"
    given = fake.credentials()
    if unreachable != "drive":
        given = dataclasses.replace(given, token_uri=nowhere + "token")
    sleeps = Sleeps()
    backend = open_drive("shop", given, root_url=nowhere, sleep=sleeps)
    with pytest.raises(StorageUnavailable, match="cannot be reached from this machine") as caught:
        list(backend.list("data"))
    assert caught.value.retryable
    assert "check the network" in str(caught.value)
    assert len(sleeps.waits) == UNREACHABLE_ATTEMPTS - 1 < Backoff().attempts - 1
