"""Resumable uploads to Google Drive, chunk by chunk, in our own retry loop.

Each `next_chunk` is one attempt (`num_retries=0`: the client's own retries resend an exhausted
stream slice after a 5xx). After a failure the client's next call first asks the server for its
offset (`Content-Range: bytes */N`) and goes on from there, so a dropped connection costs at most
the chunk in flight. An expired session (404) starts the upload over.

A session's URI may be kept outside the process (`UploadSessions`, the event log in time): it is
kept as soon as the session is open, before the first byte of content goes (the client would open
it and send the first chunk in one call, and a pack is often one chunk), and a restarted process
sets it on a new request and marks the request as failed, so that the client asks for the offset
before sending a byte. That mark is `_in_error_state`, a private attribute of the
client's `HttpRequest`: the library's version is pinned below its next major, and
test_resumes_an_upload_after_a_restart_sending_at_most_one_chunk_again covers it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from googleapiclient.errors import ResumableUploadError
from googleapiclient.http import MediaUpload

from capsule.adapters.errors import StorageUnavailable
from capsule.adapters.repository.backends.gdrive_retry import Gone, Retrier

CHUNK_UNIT = 256 * 1024
"""Every chunk but the last is a multiple of this, as Drive requires."""


class UploadSessions(Protocol):
    """Where a resumable upload's session is kept, so that a restarted process goes on with it."""

    def load(self, kind: str, name: str) -> str | None:
        """The session URI saved for (kind, name), if any."""

    def save(self, kind: str, name: str, uri: str, size: int) -> None:
        """Record that (kind, name), `size` bytes, is being uploaded through session `uri`."""

    def clear(self, kind: str, name: str) -> None:
        """Forget the session of (kind, name): the upload finished or its session expired."""


class BytesMedia(MediaUpload):  # type: ignore[misc]
    """Media served from bytes, not a stream: a resent chunk is always whole (a stream slice that
    a failed send consumed would go out empty)."""

    def __init__(self, data: bytes, chunk_size: int, resumable: bool) -> None:
        if chunk_size <= 0 or chunk_size % CHUNK_UNIT:
            raise ValueError(f"a Drive upload chunk must be a multiple of {CHUNK_UNIT} bytes")
        self._data, self._chunk, self._resumable = data, chunk_size, resumable

    def chunksize(self) -> int:
        return self._chunk

    def mimetype(self) -> str:
        return "application/octet-stream"

    def size(self) -> int:
        return len(self._data)

    def resumable(self) -> bool:
        return self._resumable

    def getbytes(self, begin: int, length: int) -> bytes:
        return self._data[begin : begin + length]

    def has_stream(self) -> bool:
        return False


@dataclass
class Pace:
    """Keeps an upload under `limit` bytes a second (no limit when None) by sleeping between chunks."""

    limit: int | None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def reached(self, sent: int) -> None:
        """`sent` bytes have gone so far: wait until the limit allows them."""
        if self.limit:
            ahead = sent / self.limit - (self.clock() - self.started)
            if ahead > 0:
                self.sleep(ahead)


@dataclass(frozen=True)
class UploadOf:
    """What is being uploaded, for the saved session and for messages."""

    kind: str
    name: str
    size: int
    where: str
    sessions: UploadSessions | None

    def load(self) -> str | None:
        return self.sessions.load(self.kind, self.name) if self.sessions is not None else None

    def save(self, uri: str) -> None:
        if self.sessions is not None:
            self.sessions.save(self.kind, self.name, uri, self.size)

    def clear(self) -> None:
        if self.sessions is not None:
            self.sessions.clear(self.kind, self.name)


def open_session(request: Any, http: Any) -> str:
    """Open `request`'s upload session, as the client's first `next_chunk` does before its first
    chunk; set its `resumable_uri` and return it."""
    headers = dict(request.headers)
    headers["X-Upload-Content-Type"] = request.resumable.mimetype()
    headers["X-Upload-Content-Length"] = str(request.resumable.size())
    headers["content-length"] = str(request.body_size)
    response, content = http.request(request.uri, method=request.method, body=request.body, headers=headers)
    if response.status != 200 or "location" not in response:
        raise ResumableUploadError(response, content)
    uri: str = response["location"]
    request.resumable_uri = uri
    return uri


def upload_resumable(
    new_request: Callable[[], Any],
    http: Callable[[], Any],
    retrier: Retrier,
    upload: UploadOf,
    pace: Pace,
) -> Any:
    """Upload through `new_request()`'s session (or the saved one) and return the new file's
    resource. Raises `Gone` when Drive refuses to open a session with 404 (the folder is gone)."""
    what = f"upload {upload.kind} {upload.name[:12]}"
    request = new_request()
    saved = upload.load()
    resuming = bool(saved)
    if resuming:
        request.resumable_uri = saved
        request._in_error_state = True  # ask for the server's offset before sending a byte
    failures = restarts = 0
    while True:
        try:
            if request.resumable_uri is None and upload.sessions is not None:
                saved = open_session(request, http())
                upload.save(saved)
            _, response = request.next_chunk(http=http(), num_retries=0)
        except Exception as error:
            try:
                transient = retrier.classify(error)
            except Gone:
                if request.resumable_uri is None:
                    raise  # no session yet: what is gone is the folder
                restarts += 1  # the session expired (after a week, or forgotten): start over
                if restarts > retrier.backoff.attempts:
                    raise StorageUnavailable(
                        f"Google Drive kept losing the upload of {upload.kind} {upload.name[:12]} to "
                        f"{upload.where}",
                        retryable=True,
                    ) from None
                upload.clear()
                request, saved, resuming = new_request(), None, False
                continue
            except StorageUnavailable:
                if not resuming:
                    raise
                upload.clear()  # the saved session is refused (opened for other bytes): start over
                request, saved, resuming = new_request(), None, False
                continue
            failures += 1
            retrier.wait(failures, transient, what)
            continue
        failures, resuming = 0, False
        if response is not None:
            if saved:
                upload.clear()
            return response
        if request.resumable_uri != saved:
            saved = request.resumable_uri
            upload.save(saved)
        pace.reached(request.resumable_progress)
