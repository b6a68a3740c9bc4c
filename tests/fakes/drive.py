"""A fake Google Drive v3 and OAuth 2.0 server on 127.0.0.1, for tests of the Drive destination.

It speaks the wire protocol Google's client libraries speak, so the code under test runs the real
google-api-python-client, google-auth and google-auth-oauthlib against it:

- `POST /token`: the refresh_token and authorization_code grants (the client's id and secret in the
  form or as HTTP Basic; PKCE's code_verifier checked against the challenge); `GET /auth` plays the
  consent screen and redirects to the redirect_uri with `code` and `state`.
- `POST /upload/drive/v3/files?uploadType=resumable` opens a session (200 + Location); each chunk is a
  `PUT` with `Content-Range: bytes a-b/N` answered 308 + `Range` until the last (200 + the file);
  `bytes */N` with no body asks for the offset. `uploadType=multipart` stores a small file at once.
- `GET /drive/v3/files` with `q` (parents, name, mimeType, trashed, `appProperties has {...}`, joined
  by `and`) and paging; `GET /drive/v3/files/ID` (metadata, or `alt=media` with `Range` -> 206);
  `POST /drive/v3/files` (a folder); `DELETE /drive/v3/files/ID` -> 204. A bad access token -> 401.

Use::

    with FakeDrive() as fake:                    # or shared_fake(): one per test process
        credentials = fake.credentials()         # as if the account's owner had consented
        backend = open_drive("shop", credentials, root_url=fake.url, sleep=Sleeps())
        fake.fail(2, "server_error", method="PUT")     # the next two chunk PUTs answer 503
        fake.fail(1, "drop", method="PUT", skip=1)     # the second: read half, then reset
        fake.fail(1, "invalid_grant")                  # the next refresh is refused
        fake.fail(1, "stall", method="PUT"); fake.stalled.wait(); ...; fake.release()  # kill mid-chunk
        fake.revoke(credentials.refresh_token); fake.expire_access_tokens()
        fake.page_size = 3                             # lists come in pages of three
        fake.requests      # what arrived: method, path, query, bytes received and sent, status, Content-Range
        fake.downloads(since)                          # the file reads among them
        fake.count("POST", "/upload/"), fake.received("/upload/"), fake.named("config")

`client_config()` is a client-secrets document for the consent flow, whose `/auth` redirects at once
to the redirect_uri with `code` and `state` (a test plays the browser with one GET).

Kinds: server_error (503), too_many_requests (429), rate_limit / user_rate_limit (403 with those
reasons), quota (403 storageQuotaExceeded), drop, stall (a drop that first waits, `stalled` set,
until `release()`: the client can be killed with a chunk half sent), expire_session (404 on an upload
session, which is forgotten), invalid_grant (on /token). A dropped chunk keeps what arrived in whole
256 KiB units, as Google's servers do. Without `path`, a fault never hits /token or /auth, and
invalid_grant only hits /token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from capsule.adapters.repository.backends.gdrive_auth import DriveCredentials

FOLDER = "application/vnd.google-apps.folder"
QUANTUM = 256 * 1024
"""A dropped chunk keeps what arrived in whole units of this size, as Google's servers do."""

FAULT_KINDS = frozenset(
    {
        "server_error",
        "too_many_requests",
        "rate_limit",
        "user_rate_limit",
        "quota",
        "drop",
        "stall",
        "expire_session",
        "invalid_grant",
    }
)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    received: int
    """Body bytes read from the request (part of it for a dropped one)."""
    status: int
    """The status answered; 0 when the connection was dropped."""
    content_range: str = ""
    """The request's Content-Range (`bytes */N` is an upload's status query)."""
    sent: int = 0
    """Body bytes answered (a download's bytes)."""


@dataclass
class Fault:
    kind: str
    remaining: int
    method: str | None = None
    path: str | None = None
    skip: int = 0
    """Matching requests to let through before the fault starts."""

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0 or (self.method is not None and self.method != method):
            return False
        if self.kind == "invalid_grant":
            return path == "/token"
        if self.path is not None:
            return path.startswith(self.path)
        if path in ("/token", "/auth"):
            return False
        return self.kind != "expire_session" or (method == "PUT" and path.startswith("/upload/"))


@dataclass
class StoredFile:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    app_properties: dict[str, str]
    content: bytes
    created: float
    modified: float
    trashed: bool = False

    def resource(self) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": list(self.parents),
            "appProperties": dict(self.app_properties),
            "createdTime": _rfc3339(self.created),
            "modifiedTime": _rfc3339(self.modified),
            "trashed": self.trashed,
        }
        if self.mime_type != FOLDER:
            resource["size"] = str(len(self.content))
        return resource


@dataclass
class UploadSession:
    metadata: dict[str, Any]
    total: int | None
    received: bytearray = field(default_factory=bytearray)
    file_id: str | None = None


class HttpProblem(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _rfc3339(t: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class FakeDrive:
    """One Google account's Drive and the OAuth server that grants access to it, in memory."""

    client_id = "capsule-test.apps.googleusercontent.com"
    client_secret = "fake-client-secret-0123"

    def __init__(self, page_size: int = 1000) -> None:
        self.page_size = page_size
        """The most files one list page holds, whatever the client asks (set small to test paging)."""
        self.files: dict[str, StoredFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.refresh_tokens: set[str] = set()
        self.access_tokens: set[str] = set()
        self.issued: list[str] = []
        """Every access token given, still valid or not."""
        self.consents: list[dict[str, str]] = []
        """The query of every visit to /auth."""
        self.stalled = threading.Event()
        """Set when a `stall` fault holds a request (half its body read)."""
        self._released = threading.Event()
        self._codes: dict[str, dict[str, str]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # ---- the API tests use ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The root URL, as a Drive backend's `root_url`."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def token_uri(self) -> str:
        return self.url + "token"

    @property
    def auth_uri(self) -> str:
        return self.url + "auth"

    def client_config(self, flavour: str = "installed") -> dict[str, Any]:
        """Google's client-secrets JSON for this server, as the Cloud console downloads it."""
        return {
            flavour: {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "auth_uri": self.auth_uri,
                "token_uri": self.token_uri,
                "redirect_uris": ["http://127.0.0.1/callback"],
            }
        }

    def credentials(self) -> DriveCredentials:
        """Credentials for a new refresh token of this server's account."""
        return DriveCredentials(
            self.client_id, self.client_secret, self.issue_refresh_token(), self.token_uri
        )

    def issue_refresh_token(self) -> str:
        token = "1//fake-refresh-" + secrets.token_urlsafe(16)
        with self._lock:
            self.refresh_tokens.add(token)
        return token

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self.refresh_tokens.discard(refresh_token)

    def expire_access_tokens(self) -> None:
        """Every access token given so far stops working (the next call answers 401)."""
        with self._lock:
            self.access_tokens.clear()

    def fail(self, next_n: int = 1, kind: str = "server_error", *, method: str | None = None,
             path: str | None = None, skip: int = 0) -> None:  # fmt: skip
        """Answer the next `next_n` matching requests with fault `kind` (see the module's doc),
        after letting `skip` of them through."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"{kind!r} is not a fault kind: use one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self.faults.append(Fault(kind, next_n, method, path, skip))

    def reset(self) -> None:
        """Forget every file, session, fault and recorded request (tokens stay valid)."""
        with self._lock:
            self.files.clear()
            self.sessions.clear()
            self.faults.clear()
            self.requests.clear()
            self.stalled.clear()
            self._released.clear()

    def release(self) -> None:
        """Let every stalled request go on: its connection is then reset, as a `drop`'s is."""
        self._released.set()

    def count(self, method: str, path_prefix: str = "/") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and r.path.startswith(path_prefix))

    def received(self, path_prefix: str = "/upload/") -> int:
        """Body bytes received by requests under `path_prefix`."""
        with self._lock:
            return sum(r.received for r in self.requests if r.path.startswith(path_prefix))

    def downloads(self, since: int = 0) -> list[Recorded]:
        """The file reads (`alt=media`) answered since request number `since`."""
        with self._lock:
            return [r for r in self.requests[since:] if r.query.get("alt") == "media"]

    def named(self, name: str) -> list[StoredFile]:
        with self._lock:
            return [f for f in self.files.values() if f.name == name and not f.trashed]

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- serving --------------------------------------------------------------------------------
    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.remaining -= 1
                    return fault
        return None

    def record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def new_id(self) -> str:
        return f"f{next(self._ids):06d}{secrets.token_hex(4)}"

    def check_metadata(self, metadata: dict[str, Any]) -> tuple[str, dict[str, str], list[str]]:
        """A new file's name, appProperties and parents, refused as Drive refuses them."""
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise HttpProblem(400, "required", "A file needs a name.")
        properties = metadata.get("appProperties") or {}
        for key, value in properties.items():
            if len(key.encode()) + len(str(value).encode()) > 124:
                raise HttpProblem(400, "invalid", "An appProperties entry is longer than 124 bytes.")
        parents = metadata.get("parents") or ["root"]
        with self._lock:
            for parent in parents:
                if parent != "root" and parent not in self.files:
                    raise HttpProblem(404, "notFound", f"File not found: {parent}.")
        return name, {k: str(v) for k, v in properties.items()}, list(parents)

    def new_file(self, metadata: dict[str, Any], content: bytes) -> StoredFile:
        name, properties, parents = self.check_metadata(metadata)
        with self._lock:
            now = time.time()
            mime_type = metadata.get("mimeType") or "application/octet-stream"
            stored = StoredFile(self.new_id(), name, mime_type, parents, properties, content, now, now)
            self.files[stored.id] = stored
        return stored

    def search(self, q: str) -> list[StoredFile]:
        test = parse_query(q)
        with self._lock:
            return sorted((f for f in self.files.values() if test(f)), key=lambda f: (f.created, f.id))


# ---- the query language (the part of it a client of ours may use) ---------------------------------
_TOKEN = re.compile(r"\s*(?:'((?:[^'\\]|\\.)*)'|(!=|=|\{|\})|([A-Za-z_]+))")


def _tokens(q: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(q.rstrip()):
        m = _TOKEN.match(q, pos)
        if m is None:
            raise HttpProblem(400, "invalidQuery", f"Invalid Value: cannot read q at {q[pos : pos + 20]!r}")
        literal, op, word = m.groups()
        if literal is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", literal)))
        else:
            tokens.append(("op", op) if op else ("word", word))
        pos = m.end()
    return tokens


def parse_query(q: str) -> Callable[[StoredFile], bool]:
    """A predicate for Drive's `q`: clauses joined by `and`, each one Capsule's client may send."""
    tokens = _tokens(q)
    tests: list[Callable[[StoredFile], bool]] = []
    i = 0

    def take(kind: str, value: str | None = None) -> str:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != kind or (value is not None and tokens[i][1] != value):
            raise HttpProblem(400, "invalidQuery", f"Invalid Value: q {q!r} is not understood")
        i += 1
        return tokens[i - 1][1]

    while i < len(tokens):
        if tests:
            take("word", "and")
        kind, value = tokens[i]
        if kind == "str":
            i += 1
            take("word", "in")
            take("word", "parents")
            tests.append(lambda f, parent=value: parent in f.parents)
        elif value in ("name", "mimeType"):
            i += 1
            op = take("op")
            wanted = take("str")
            attribute = "name" if value == "name" else "mime_type"
            if op not in ("=", "!="):
                raise HttpProblem(400, "invalidQuery", f"Invalid Value: {op} on {value}")
            tests.append(
                lambda f, a=attribute, w=wanted, eq=(op == "="): (getattr(f, a) == w) == eq  # type: ignore[misc]
            )
        elif value == "trashed":
            i += 1
            take("op", "=")
            flag = take("word")
            tests.append(lambda f, t=(flag == "true"): f.trashed == t)
        elif value == "appProperties":
            i += 1
            take("word", "has")
            take("op", "{")
            take("word", "key")
            take("op", "=")
            key = take("str")
            take("word", "and")
            take("word", "value")
            take("op", "=")
            wanted = take("str")
            take("op", "}")
            tests.append(lambda f, k=key, w=wanted: f.app_properties.get(k) == w)
        else:
            raise HttpProblem(400, "invalidQuery", f"Invalid Value: q {q!r} is not understood")
    return lambda f: all(t(f) for t in tests)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


# ---- the HTTP side --------------------------------------------------------------------------------
_FAULT_ANSWERS = {
    "server_error": (503, "backendError", "Backend Error"),
    "too_many_requests": (429, "rateLimitExceeded", "Too Many Requests"),
    "rate_limit": (403, "rateLimitExceeded", "Rate Limit Exceeded"),
    "user_rate_limit": (403, "userRateLimitExceeded", "User Rate Limit Exceeded"),
    "quota": (403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded."),
    "expire_session": (404, "notFound", "Not Found"),
}


def _handler_for(fake: FakeDrive) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        drive = fake

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave in separate writes: no delayed-ACK stall
    drive: FakeDrive

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # a dropped connection
            super().finish()

    # ---- plumbing -------------------------------------------------------------------------------
    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        fault = self.drive.take_fault(method, path)
        if fault is not None and fault.kind in ("drop", "stall"):
            self._drop(method, path, query, length, stall=fault.kind == "stall")
            return
        body = self.rfile.read(length) if length else b""
        self._method, self._path, self._query, self._received = method, path, query, len(body)
        try:
            if fault is not None:
                self._fault(fault, query)
            else:
                self._route(method, path, query, body)
        except HttpProblem as problem:
            self._error(problem.status, problem.reason, problem.message)

    def _drop(self, method: str, path: str, query: dict[str, str], length: int, stall: bool = False) -> None:
        part = self.rfile.read(length // 2) if length else b""
        if method == "PUT" and "upload_id" in query:
            session = self.drive.sessions.get(query["upload_id"])
            match = re.match(r"bytes (\d+)-(\d+)/", self.headers.get("Content-Range", ""))
            if session is not None and match and int(match.group(1)) == len(session.received):
                session.received += part[: len(part) // QUANTUM * QUANTUM]
        self.drive.record(Recorded(method, path, query, len(part), 0, self.headers.get("Content-Range", "")))
        if stall:
            self.drive.stalled.set()
            self.drive._released.wait(timeout=600)
        # SO_LINGER 0: close with a reset, as a broken network path does, not with a clean FIN
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _fault(self, fault: Fault, query: dict[str, str]) -> None:
        if fault.kind == "invalid_grant":
            self._json(
                400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            )
        else:
            if fault.kind == "expire_session":
                self.drive.sessions.pop(query.get("upload_id", ""), None)
            self._error(*_FAULT_ANSWERS[fault.kind])

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        content_range = self.headers.get("Content-Range", "")
        sent = len(body) if self.command != "HEAD" else 0
        self.drive.record(
            Recorded(self._method, self._path, self._query, self._received, status, content_range, sent)
        )
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(
            status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _error(self, status: int, reason: str, message: str) -> None:
        domain = "usageLimits" if "Limit" in reason else "global"
        self._json(
            status,
            {"error": {"code": status, "message": message,
                       "errors": [{"domain": domain, "reason": reason, "message": message}]}},
        )  # fmt: skip

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if path == "/token" and method == "POST":
            return self._token(body)
        if path == "/auth" and method == "GET":
            return self._consent(query)
        self._authorise()
        files = "/drive/v3/files"
        if path == files and method == "GET":
            return self._list(query)
        if path == files and method == "POST":
            return self._json(200, self.drive.new_file(json.loads(body or b"{}"), b"").resource())
        if path.startswith(files + "/") and method in ("GET", "DELETE"):
            file_id = path[len(files) + 1 :]
            return self._get(file_id, query) if method == "GET" else self._delete(file_id)
        if path == "/upload" + files:
            if method == "POST" and query.get("uploadType") == "multipart":
                return self._multipart(body)
            if method == "POST" and query.get("uploadType") == "resumable":
                return self._open_session(body)
            if method == "PUT" and "upload_id" in query:
                return self._chunk(query["upload_id"], body)
        raise HttpProblem(404, "notFound", f"no such method: {method} {path}")

    def _authorise(self) -> None:
        header = self.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        if not header.startswith("Bearer ") or token not in self.drive.access_tokens:
            raise HttpProblem(401, "authError", "Invalid Credentials")

    # ---- OAuth ----------------------------------------------------------------------------------
    def _client(self, form: dict[str, str]) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        else:
            user, password = form.get("client_id", ""), form.get("client_secret", "")
        return user == self.drive.client_id and password == self.drive.client_secret

    def _token(self, body: bytes) -> None:
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        if not self._client(form):
            return self._json(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        grant = form.get("grant_type")
        refresh_token: str | None = None
        if grant == "refresh_token":
            if form.get("refresh_token") not in self.drive.refresh_tokens:
                return self._json(400, {"error": "invalid_grant", "error_description": "Bad Request"})
        elif grant == "authorization_code":
            code = self.drive._codes.pop(form.get("code", ""), None)
            if code is None or code["redirect_uri"] != form.get("redirect_uri"):
                return self._json(400, {"error": "invalid_grant", "error_description": "Bad code"})
            if code.get("code_challenge"):
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code["code_challenge"]:
                    return self._json(400, {"error": "invalid_grant", "error_description": "Bad verifier"})
            refresh_token = self.drive.issue_refresh_token()
        else:
            return self._json(400, {"error": "unsupported_grant_type"})
        access = "ya29.fake-" + secrets.token_urlsafe(12)
        with self.drive._lock:
            self.drive.access_tokens.add(access)
            self.drive.issued.append(access)
        answer: dict[str, Any] = {"access_token": access, "expires_in": 3599, "token_type": "Bearer",
                                  "scope": "https://www.googleapis.com/auth/drive.file"}  # fmt: skip
        if refresh_token is not None:
            answer["refresh_token"] = refresh_token
        self._json(200, answer)

    def _consent(self, query: dict[str, str]) -> None:
        with self.drive._lock:
            self.drive.consents.append(dict(query))
        if query.get("client_id") != self.drive.client_id or not query.get("redirect_uri"):
            raise HttpProblem(400, "invalid_request", "unknown client or no redirect_uri")
        code = "4/fake-code-" + secrets.token_urlsafe(8)
        self.drive._codes[code] = {
            "redirect_uri": query["redirect_uri"],
            "code_challenge": query.get("code_challenge", ""),
        }
        target = query["redirect_uri"] + "?" + urlencode({"state": query.get("state", ""), "code": code})
        self._send(302, b"", {"Location": target})

    # ---- files ----------------------------------------------------------------------------------
    def _list(self, query: dict[str, str]) -> None:
        found = [f for f in self.drive.search(query.get("q", "trashed = false"))]
        size = min(int(query.get("pageSize") or 100), 1000, self.drive.page_size)
        start = int(query["pageToken"].removeprefix("page-")) if query.get("pageToken") else 0
        page = found[start : start + size]
        answer: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False,
                                  "files": [f.resource() for f in page]}  # fmt: skip
        if start + size < len(found):
            answer["nextPageToken"] = f"page-{start + size}"
        self._json(200, answer)

    def _file(self, file_id: str) -> StoredFile:
        found = self.drive.files.get(file_id)
        if found is None:
            raise HttpProblem(404, "notFound", f"File not found: {file_id}.")
        return found

    def _get(self, file_id: str, query: dict[str, str]) -> None:
        stored = self._file(file_id)
        if query.get("alt") != "media":
            return self._json(200, stored.resource())
        content, total = stored.content, len(stored.content)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted is None:
            return self._send(200, content, {"Content-Type": "application/octet-stream"})
        first = int(wanted.group(1))
        last = min(int(wanted.group(2)) if wanted.group(2) else total - 1, total - 1)
        if first >= total:
            return self._send(416, b"", {"Content-Range": f"bytes */{total}"})
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {first}-{last}/{total}",
        }
        self._send(206, content[first : last + 1], headers)

    def _delete(self, file_id: str) -> None:
        with self.drive._lock:
            self._file(file_id)
            doomed = {file_id}
            while True:  # a folder takes what it holds with it
                more = {f.id for f in self.drive.files.values() if doomed & set(f.parents)} - doomed
                if not more:
                    break
                doomed |= more
            for gone in doomed:
                del self.drive.files[gone]
        self._send(204, b"")

    def _multipart(self, body: bytes) -> None:
        match = re.search(r'boundary="?([^";]+)"?', self.headers.get("Content-Type", ""))
        if match is None:
            raise HttpProblem(400, "badContent", "multipart upload without a boundary")
        parts = []
        for part in body.split(b"--" + match.group(1).encode())[1:-1]:
            # headers end at the first blank line, and their line ending is the part's line ending
            crlf, lf = part.find(b"\r\n\r\n"), part.find(b"\n\n")
            eol = b"\r\n" if crlf != -1 and (lf == -1 or crlf < lf) else b"\n"
            _, _, payload = part.removeprefix(eol).partition(eol + eol)
            parts.append(payload.removesuffix(eol))
        if len(parts) != 2:
            raise HttpProblem(400, "badContent", f"multipart upload with {len(parts)} parts, not 2")
        self._json(200, self.drive.new_file(json.loads(parts[0]), parts[1]).resource())

    def _open_session(self, body: bytes) -> None:
        total = self.headers.get("X-Upload-Content-Length")
        metadata = json.loads(body or b"{}")
        self.drive.check_metadata(metadata)  # now, as Drive does
        with self.drive._lock:
            upload_id = secrets.token_urlsafe(12)
            self.drive.sessions[upload_id] = UploadSession(metadata, int(total) if total else None)
        location = f"{self.drive.url}upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
        self._send(200, b"", {"Location": location})

    def _chunk(self, upload_id: str, body: bytes) -> None:
        session = self.drive.sessions.get(upload_id)
        if session is None:
            raise HttpProblem(404, "notFound", "Not Found")
        if session.file_id is not None:
            return self._json(200, self._file(session.file_id).resource())
        content_range = self.headers.get("Content-Range", "")
        status = re.fullmatch(r"bytes \*/(\d+|\*)", content_range)
        chunk = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
        if chunk is not None:
            first, last, total = int(chunk.group(1)), int(chunk.group(2)), chunk.group(3)
            if last - first + 1 != len(body) or first > len(session.received):
                raise HttpProblem(400, "badRange", f"Content-Range {content_range} does not fit")
            session.received += body[len(session.received) - first :]
            if total != "*":
                session.total = int(total)
        elif (
            status is not None
            and status.group(1) != "*"
            and session.total not in (None, int(status.group(1)))
        ):
            raise HttpProblem(
                400, "badRange", f"the upload is of {session.total} bytes, not {status.group(1)}"
            )
        elif status is None and not (content_range == "" and not body and session.total == 0):
            raise HttpProblem(400, "badRange", f"Content-Range {content_range!r} is not understood")
        if session.total is not None and len(session.received) >= session.total:
            stored = self.drive.new_file(session.metadata, bytes(session.received[: session.total]))
            session.file_id = stored.id
            return self._json(200, stored.resource())
        headers = {"Range": f"bytes=0-{len(session.received) - 1}"} if session.received else {}
        self._send(308, b"", headers)


_shared: FakeDrive | None = None
_shared_lock = threading.Lock()


def shared_fake() -> FakeDrive:
    """One fake per test process, started on first use (tests reset it, or use folders of their own)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FakeDrive()
        return _shared


class Sleeps:
    """An injected `sleep` that records the waits and waits not; `clock` is a matching monotonic
    clock that the waits move on."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 0.0

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class MemorySessions:
    """`UploadSessions` in a dict, standing in for the event log that keeps them across restarts."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str], tuple[str, int]] = {}
        self.cleared: list[tuple[str, str]] = []

    def load(self, kind: str, name: str) -> str | None:
        found = self.saved.get((kind, name))
        return found[0] if found else None

    def save(self, kind: str, name: str, uri: str, size: int) -> None:
        self.saved[(kind, name)] = (uri, size)

    def clear(self, kind: str, name: str) -> None:
        self.saved.pop((kind, name), None)
        self.cleared.append((kind, name))
