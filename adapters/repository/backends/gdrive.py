"""A repository in a Google Drive folder: the storage contract over Drive's v3 API.

Layout (docs/destinations.md, "Google Drive: how objects are stored"): one folder per
repository, found by its name and the appProperty `capsule=repository` (the oldest wins if two
processes made one each); each object is a file directly in it named `<kind>-<name>` (the config is
`config`) and tagged with appProperties `capsule=1`, `kind` and `name`. Listing a kind is one paged
query on the folder and the `kind` tag.

- `one_listing()`: for one operation that touches many kinds (a `capsule sync`), one paged search
  of the whole folder answers every `list`, `exists` and `stat` and finds the files a write replaces
  or a remove deletes; the backend's own writes and removes keep it current. It is never kept past
  the `with` block: an object another process writes or removes meanwhile is seen only after it.
  Locks are never answered from it (they are how processes see each other).

- Writes never modify a file: a new file is uploaded, then every older file of that name deleted,
  so a reader sees the old bytes or the new (a file id it resolved and then lost to a delete is
  resolved again). An object named by its content (a pack, an index file, a snapshot) skips that
  look-up: an older file of its name holds the same bytes, and `remove` deletes every one.
- An object larger than Drive's limit for one multipart request (5 MB) or than one chunk goes up by
  resumable upload, one of up to one chunk (64 MiB by default) in a single PUT after opening the
  session: a pack of 16 to 64 MiB costs two requests. A smaller one, the last pack of a backup
  too, goes in one multipart request.
- A read is one request, of a range or of a whole object. A restore fetches the packs it needs most
  of whole (storage.CostlyReads, packcache) rather than reading them in many small ranges.
- Reads use a small cache of name -> file id; listing never does, so a write that returned is listed.
  The first `stat` or `size` of a content-named object after this process wrote it is the write's
  own answer (Drive's size of the file it stored), not one more request.
- Every request is one attempt inside our own retry loop (gdrive_retry); a resumable upload that
  fails asks the server for its offset and goes on from there, and an expired session starts over.
- `sessions` keeps an upload's session URI across a restart (gdrive_upload).
- Each thread has its own HTTP connection (httplib2 objects are not thread-safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import google.oauth2.credentials
import google_auth_httplib2
from google.auth.credentials import Credentials
from googleapiclient.discovery import build_from_document
from googleapiclient.http import build_http

from capsule.adapters.errors import ObjectNotFound, StorageUnavailable
from capsule.adapters.repository.backends.gdrive_auth import SCOPE, DriveCredentials
from capsule.adapters.repository.backends.gdrive_retry import Backoff, Gone, Retrier, Unsatisfiable
from capsule.adapters.repository.backends.gdrive_upload import (
    CHUNK_UNIT,
    BytesMedia,
    Pace,
    UploadOf,
    UploadSessions,
    upload_resumable,
)
from capsule.adapters.repository.backends.storage import Kind, ObjectInfo, check_name

__all__ = ["DEFAULT_ROOT_URL", "DriveBackend", "DriveCredentials", "UploadSessions", "open_drive"]

DEFAULT_ROOT_URL = "https://www.googleapis.com/"
ROOT_URL_VARIABLE = "CAPSULE_GDRIVE_ROOT_URL"
FOLDER = "application/vnd.google-apps.folder"
CHUNK = 64 * 1024 * 1024
"""The largest upload chunk: an object up to this size goes in one PUT after opening its session.
Bytes sent again after an interruption are at most one chunk, and the chunk in flight is a slice of
the object, which the caller holds in memory already."""
MULTIPART_LIMIT = 5 * 1000 * 1000
"""Google documents multipart uploads for files of 5 MB or less; larger ones go by resumable upload."""
PACED_SECONDS = 4
"""Under a bandwidth limit, a chunk holds at most this many seconds of it: the pace is kept between
chunks, and a chunk goes at the line's full speed."""
CONTENT_NAMED = frozenset(("data", "index", "snapshots"))
"""Kinds named by the SHA-256 of their bytes: two files of one such name hold the same bytes."""
FILE_FIELDS = "id, name, size, createdTime, modifiedTime"
LISTING_FIELDS = FILE_FIELDS + ", appProperties"
UNLISTED = frozenset(("locks",))
"""Kinds `one_listing` never answers for: a lock is how another process is seen, so it is searched."""
CONSENT_HINT = "capsule destinations add gdrive NAME ..."
"""The command that gives consent again, for messages (the destination's own name when known)."""

T = TypeVar("T")


def _discovery_document(root_url: str) -> dict[str, Any]:
    """Drive v3's discovery document, shipped with the client, pointed at `root_url` (uploads too)."""
    package = resources.files("googleapiclient.discovery_cache")
    document: dict[str, Any] = json.loads(package.joinpath("documents/drive.v3.json").read_text("utf-8"))
    document["rootUrl"] = root_url
    document["baseUrl"] = root_url + document["servicePath"]
    document.pop("mtlsRootUrl", None)
    return document


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def _newest_first(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(files, key=lambda f: (f.get("createdTime", ""), f["id"]), reverse=True)


class DriveBackend:
    """One repository in one Drive folder; see the module's docstring."""

    costly_reads = True
    """Every read is an HTTP request (see storage.CostlyReads): a restore fetches packs whole."""

    def __init__(
        self,
        folder_name: str,
        credentials: Credentials,
        *,
        root_url: str = DEFAULT_ROOT_URL,
        chunk_size: int = CHUNK,
        sessions: UploadSessions | None = None,
        bandwidth_limit: int | None = None,
        backoff: Backoff = Backoff(),  # noqa: B008 - frozen
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 120.0,
        consent_hint: str = CONSENT_HINT,
    ) -> None:
        if not folder_name or folder_name != folder_name.strip() or "\n" in folder_name:
            raise ValueError(f"{folder_name!r} cannot name a Drive folder: give a name on one line")
        if chunk_size <= 0 or chunk_size % CHUNK_UNIT:
            raise ValueError(f"a Drive upload chunk must be a multiple of {CHUNK_UNIT} bytes")
        self.folder_name = folder_name
        self._credentials = credentials
        self._chunk = chunk_size
        self._sessions = sessions
        self._bandwidth = bandwidth_limit
        self._sleep, self._clock, self._timeout = sleep, clock, timeout
        self._retrier = Retrier(self.describe(), consent_hint, backoff, sleep)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._folder: str | None = None
        self._ids: dict[tuple[str, str], str] = {}
        self._written: dict[tuple[str, str], ObjectInfo] = {}
        """What Drive answered to this process's last write of a content-named object, until a stat."""
        self._view: dict[tuple[str, str], list[dict[str, Any]]] | None = None
        """While `one_listing` is held: the folder's files by (kind, name), newest first."""
        self._view_depth = 0
        self._no_folder = False
        """While `one_listing` is held: its search found no folder (so a write makes one at once)."""
        root = root_url if root_url.endswith("/") else root_url + "/"
        self._files = build_from_document(_discovery_document(root), http=self._http()).files()

    def __repr__(self) -> str:
        return f"DriveBackend({self.folder_name!r})"

    def describe(self) -> str:
        return f'Google Drive folder "{self.folder_name}"'

    # ---- plumbing -------------------------------------------------------------------------------
    def _http(self) -> Any:
        http = getattr(self._local, "http", None)
        if http is None:
            transport = build_http()  # not a plain httplib2.Http: that follows Drive's 308 as a redirect
            transport.timeout = self._timeout
            http = self._local.http = google_auth_httplib2.AuthorizedHttp(self._credentials, http=transport)
        return http

    def _run(self, what: str, request: Callable[[], Any]) -> Any:
        return self._retrier.call(what, lambda: request().execute(http=self._http()))

    def _search(self, q: str, fields: str = FILE_FIELDS) -> list[dict[str, Any]]:
        """Every file `q` finds, page by page; none when Drive answers 404 (a parent is gone)."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            try:
                page = self._run(
                    "list files",
                    lambda t=token: self._files.list(  # type: ignore[misc]
                        q=q,
                        pageSize=1000,
                        pageToken=t,
                        fields=f"nextPageToken, files({fields})",
                        spaces="drive",
                    ),
                )
            except Gone:
                self._folder_gone()
                return []
            found.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return found

    def _folder_gone(self) -> None:
        """The folder was deleted: find or make it again, and stop answering from a listing of it."""
        with self._lock:
            self._folder = None
            if self._view is not None:
                self._view, self._no_folder = None, False

    def _folders(self) -> list[dict[str, Any]]:
        """The repository's folders, oldest first (two when two processes made one at once)."""
        folders = self._search(
            f"name = {_quote(self.folder_name)} and mimeType = '{FOLDER}' and trashed = false "
            "and appProperties has { key='capsule' and value='repository' }"
        )
        return _newest_first(folders)[::-1]

    def _folder_id(self, create: bool) -> str | None:
        with self._lock:
            if self._folder is not None:
                return self._folder
            if self._no_folder and not create:
                return None  # the listing held found none
            absent = self._no_folder
        folders = [] if absent else self._folders()
        if not folders and create:
            body = {"name": self.folder_name, "mimeType": FOLDER, "appProperties": {"capsule": "repository"}}
            made = self._run("create the folder", lambda: self._files.create(body=body, fields="id"))["id"]
            folders = self._folders()  # another process may have made one at the same moment
            if folders and folders[0]["id"] != made:
                self._delete(made)  # the oldest is the repository's; ours is still empty
                with self._lock:
                    self._view = None  # a listing held found no folder, and this one may hold files
        with self._lock:
            self._folder = folders[0]["id"] if folders else None
            if self._folder is not None:
                self._no_folder = False
            return self._folder

    @staticmethod
    def _file_name(kind: str, name: str) -> str:
        return "config" if kind == "config" else f"{kind}-{name}"

    def _lookup(self, kind: str, name: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        """Every file stored under (kind, name), newest first (more than one while it is replaced):
        from the listing held, unless `fresh` (a file it named is gone) or the kind is a lock's."""
        if not fresh:
            viewed = self._viewed(kind, name)
            if viewed is not None:
                return viewed
        folder = self._folder_id(create=False)
        if folder is None:
            return []
        file_name = _quote(self._file_name(kind, name))
        q = f"{_quote(folder)} in parents and name = {file_name} and trashed = false"
        found = _newest_first(self._search(q))
        with self._lock:
            if self._view is not None and kind not in UNLISTED:
                self._view[(kind, name)] = found
        return found

    # ---- one listing for one operation ----------------------------------------------------------
    @contextlib.contextmanager
    def one_listing(self) -> Iterator[None]:
        """Within the block, one search of the folder (a request per 1,000 files) answers `list`,
        `exists` and `stat` of every kind but locks, kept current by this backend's own writes and
        removes; see the module's docstring. Nested blocks share the outer one's listing."""
        with self._lock:
            self._view_depth += 1
            first = self._view_depth == 1
        try:
            if first:
                self._take_listing()
            yield
        finally:
            with self._lock:
                self._view_depth -= 1
                if not self._view_depth:
                    self._view, self._no_folder = None, False

    def _take_listing(self) -> None:
        folder = self._folder_id(create=False)
        view: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if folder is not None:
            q = f"{_quote(folder)} in parents and trashed = false"
            for found in self._search(q, LISTING_FIELDS):
                kind = (found.get("appProperties") or {}).get("kind")
                if not isinstance(kind, str) or kind in UNLISTED:
                    continue  # not an object of ours (appProperties `kind` tags each), or a lock
                name = "config" if kind == "config" else str(found["name"]).removeprefix(f"{kind}-")
                view.setdefault((kind, name), []).append(found)
        with self._lock:
            self._view = {key: _newest_first(files) for key, files in view.items()}
            self._no_folder = folder is None

    def _viewed(self, kind: str, name: str) -> list[dict[str, Any]] | None:
        """The files of (kind, name) in the listing held; None when none is held or it is a lock."""
        with self._lock:
            if self._view is None or kind in UNLISTED:
                return None
            return list(self._view.get((kind, name), ()))

    def _view_written(self, kind: str, name: str, created: dict[str, Any], dropped: set[str]) -> None:
        with self._lock:
            if self._view is None or kind in UNLISTED:
                return
            kept = [f for f in self._view.get((kind, name), ()) if f["id"] not in dropped]
            self._view[(kind, name)] = _newest_first([created, *kept])

    def _view_removed(self, kind: str, name: str, file_ids: set[str]) -> None:
        with self._lock:
            if self._view is None or kind in UNLISTED:
                return
            kept = [f for f in self._view.get((kind, name), ()) if f["id"] not in file_ids]
            if kept:
                self._view[(kind, name)] = kept
            else:
                self._view.pop((kind, name), None)

    def _missing(self, kind: str, name: str) -> ObjectNotFound:
        return ObjectNotFound(f"{self.describe()} holds no {kind} object {name[:12]}")

    def _on_object(self, kind: Kind, name: str, action: Callable[[str], T]) -> T:
        """`action(file_id)` on the newest file of (kind, name), resolved again if it vanishes."""
        check_name(kind, name)
        cached = self._ids.get((kind, name))
        if cached is not None:
            try:
                return action(cached)
            except Gone:
                self._ids.pop((kind, name), None)
        fresh = False
        for _ in range(5):  # a file may vanish between resolving and reading while it is replaced
            files = self._lookup(kind, name, fresh=fresh)
            if not files:
                break
            try:
                result = action(files[0]["id"])
            except Gone:
                fresh = True  # the listing held named it: search again
                continue
            self._ids[(kind, name)] = files[0]["id"]
            return result
        raise self._missing(kind, name)

    # ---- the contract ---------------------------------------------------------------------------
    def create_layout(self) -> None:
        self._folder_id(create=True)

    def write(self, kind: Kind, name: str, data: bytes | memoryview) -> None:
        check_name(kind, name)
        payload = bytes(data)
        for tries_left in (1, 0):
            folder = self._folder_id(create=True)
            try:
                created = self._upload(kind, name, folder, payload)
                break
            except Gone:  # the folder is gone (deleted in Drive): find or make it again, once
                if not tries_left:
                    raise StorageUnavailable(
                        f"{self.describe()} vanished while {kind} {name[:12]} was written to it",
                        retryable=True,
                    ) from None
                self._folder_gone()
        self._ids[(kind, name)] = created["id"]
        if kind in CONTENT_NAMED:  # an older file of this name holds these bytes: leave it be
            if "size" in created and "modifiedTime" in created:
                info = ObjectInfo(int(created["size"]), _seconds(created["modifiedTime"]))
                self._written[(kind, name)] = info
            self._view_written(kind, name, created, set())
            return
        mine = (created.get("createdTime", ""), created["id"])
        dropped: set[str] = set()
        for old in self._lookup(kind, name):  # only older ones: a newer one is another writer's
            if old["id"] != created["id"] and (old.get("createdTime", ""), old["id"]) < mine:
                self._delete(old["id"])
                dropped.add(old["id"])
        self._view_written(kind, name, created, dropped)

    def _upload(self, kind: str, name: str, folder: str | None, payload: bytes) -> Any:
        properties = {"capsule": "1", "kind": kind}
        if len(name) <= 120:  # Drive keeps at most 124 bytes of key and value
            properties["name"] = name
        metadata = {"name": self._file_name(kind, name), "parents": [folder], "appProperties": properties}
        pace = Pace(self._bandwidth, self._clock, self._sleep)
        # up to 5 MB, a pack too: sent again whole after a failure, that is still less than a chunk
        resumable = len(payload) > min(self._chunk, MULTIPART_LIMIT)
        chunk = self._chunk
        if self._bandwidth:
            chunk = min(chunk, max(CHUNK_UNIT, self._bandwidth * PACED_SECONDS // CHUNK_UNIT * CHUNK_UNIT))
        media = BytesMedia(payload, chunk, resumable)
        if resumable:
            return upload_resumable(
                lambda: self._files.create(body=metadata, media_body=media, fields=FILE_FIELDS),
                self._http,
                self._retrier,
                UploadOf(kind, name, len(payload), self.describe(), self._sessions),
                pace,
            )
        created = self._run(
            f"upload {kind} {name[:12]}",
            lambda: self._files.create(body=metadata, media_body=media, fields=FILE_FIELDS),
        )
        pace.reached(len(payload))
        return created

    def _delete(self, file_id: str) -> None:
        with contextlib.suppress(Gone):  # deleted already: by another writer, or a lost answer's try
            self._run("delete a file", lambda: self._files.delete(fileId=file_id))

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(kind, name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("a read's offset and length cannot be negative")
        return self._on_object(kind, name, lambda file_id: self._read_range(file_id, offset, length))

    def _read_range(self, file_id: str, offset: int, length: int | None) -> bytes:
        if length == 0:
            self._run("read a file's size", lambda: self._files.get(fileId=file_id, fields="id"))
            return b""

        def request() -> Any:
            media = self._files.get_media(fileId=file_id)
            end = "" if length is None else str(offset + length - 1)
            media.headers["Range"] = f"bytes={offset}-{end}"
            return media

        try:
            return bytes(self._run(f"read file {file_id}", request))
        except Unsatisfiable:  # the range starts at or past the end (or the file is empty)
            return b""

    def read_tail(self, kind: Kind, name: str, length: int) -> tuple[int, bytes]:
        def tail(file_id: str) -> tuple[int, bytes]:
            size = self._stat_file(file_id).size
            start = max(0, size - length)
            return size, (self._read_range(file_id, start, size - start) if size else b"")

        return self._on_object(kind, name, tail)

    def _stat_file(self, file_id: str) -> ObjectInfo:
        found = self._run("read a file's size", lambda: self._files.get(fileId=file_id, fields=FILE_FIELDS))
        return ObjectInfo(int(found.get("size", 0)), _seconds(found["modifiedTime"]))

    def stat(self, kind: Kind, name: str) -> ObjectInfo:
        check_name(kind, name)
        written = self._written.pop((kind, name), None)
        if written is not None:  # the answer to this process's own write, once
            return written
        viewed = self._viewed(kind, name)
        if viewed and "size" in viewed[0] and "modifiedTime" in viewed[0]:  # the listing held knows
            return ObjectInfo(int(viewed[0]["size"]), _seconds(viewed[0]["modifiedTime"]))
        return self._on_object(kind, name, self._stat_file)

    def size(self, kind: Kind, name: str) -> int:
        return self.stat(kind, name).size

    def exists(self, kind: Kind, name: str) -> bool:
        check_name(kind, name)
        return bool(self._lookup(kind, name))

    def list(self, kind: Kind) -> Iterator[str]:
        check_name(kind, "config")
        with self._lock:
            viewed = None if self._view is None or kind in UNLISTED else sorted(self._view)
        if viewed is not None:
            yield from (n for k, n in viewed if k == kind)
            return
        folder = self._folder_id(create=False)
        if folder is None:
            return
        q = (
            f"{_quote(folder)} in parents and trashed = false and "
            f"appProperties has {{ key='kind' and value={_quote(kind)} }}"
        )
        seen: set[str] = set()
        for found in self._search(q, "id, name"):
            name = "config" if kind == "config" else found["name"].removeprefix(f"{kind}-")
            if name not in seen:
                seen.add(name)
                yield name

    def remove(self, kind: Kind, name: str) -> None:
        check_name(kind, name)
        removed: set[str] = set()
        for found in self._lookup(kind, name):
            self._delete(found["id"])
            removed.add(found["id"])
        self._view_removed(kind, name, removed)
        self._ids.pop((kind, name), None)
        self._written.pop((kind, name), None)


def open_drive(
    folder_name: str,
    credentials: DriveCredentials,
    *,
    root_url: str | None = None,
    chunk_size: int = CHUNK,
    sessions: UploadSessions | None = None,
    bandwidth_limit: int | None = None,
    backoff: Backoff = Backoff(),  # noqa: B008 - frozen
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    timeout: float = 120.0,
    consent_hint: str = CONSENT_HINT,
) -> DriveBackend:
    """The backend for a repository kept in Drive folder `folder_name`. The root URL is Google's
    unless `root_url`, or else the environment's CAPSULE_GDRIVE_ROOT_URL (a proxy), names another;
    the other options are DriveBackend's."""
    google_credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token=credentials.refresh_token,
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
        token_uri=credentials.token_uri,
        scopes=[SCOPE],
    )
    return DriveBackend(
        folder_name,
        google_credentials,
        root_url=root_url or os.environ.get(ROOT_URL_VARIABLE) or DEFAULT_ROOT_URL,
        chunk_size=chunk_size,
        sessions=sessions,
        bandwidth_limit=bandwidth_limit,
        backoff=backoff,
        sleep=sleep,
        clock=clock,
        timeout=timeout,
        consent_hint=consent_hint,
    )


if TYPE_CHECKING:  # mypy holds the Drive backend to the contract's signatures here
    from capsule.adapters.repository.backends.storage import Backend

    _drive: Backend = DriveBackend("x", google.oauth2.credentials.Credentials(None))  # type: ignore[no-untyped-call]
