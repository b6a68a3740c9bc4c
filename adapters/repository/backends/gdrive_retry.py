"""Which Google Drive failures are worth another try, and the backoff between tries.

Errors of Google's client libraries stop here: `classify` turns each into Capsule's (`DiskFull`,
`DestinationNeedsConsent`, `StorageUnavailable`) or into a `Transient` that `Retrier` waits out with
capped exponential backoff and full jitter. A transient failure that outlasts every attempt becomes
`StorageUnavailable(retryable=True)`: the job fails now and a later run tries again. Rate limits that
persist through every attempt on an upload are, in practice, Drive's daily upload cap (750 GB a day
per account), and the message says so.

The client library's own `num_retries` is never used: on a resumable upload it resends an exhausted
slice of the stream after a 5xx, so every call here makes one attempt and the loop is ours.
"""

from __future__ import annotations

import errno
import http.client
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httplib2
import structlog
from google.auth import exceptions as auth_errors
from googleapiclient.errors import HttpError

from capsule.adapters.errors import DestinationNeedsConsent, DiskFull, RateLimited, StorageUnavailable
from capsule.domain.errors import CapsuleError

log = structlog.get_logger(__name__)

T = TypeVar("T")

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})


class Gone(Exception):
    """Raised (inside this backend only) when Drive answers 404: a file or an upload session is gone."""


class Unsatisfiable(Exception):
    """Raised (inside this backend only) when Drive answers 416: a range starts past the end."""


UNREACHABLE_ATTEMPTS = 4
"""Tries of a request whose every connection is refused or whose host is not found (no network,
a proxy that is down): a few seconds of backoff, not a minute; the next backup tries again."""
NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


@dataclass(frozen=True)
class Transient:
    """A failure that another try may not meet."""

    reason: str
    rate_limited: bool = False
    unreachable: bool = False
    """No connection could be made at all (refused, no route, the name not found)."""


def _cannot_connect(error: BaseException) -> bool:
    """Whether `error`, or an error it wraps (the token endpoint's transport wraps its library's),
    says no connection could be opened, rather than one that broke."""
    seen: set[int] = set()
    found: list[BaseException] = [error]
    while found:
        e = found.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError | socket.gaierror | httplib2.ServerNotFoundError):
            return True
        if isinstance(e, OSError) and e.errno in NO_ROUTE:
            return True
        found.extend(
            x
            for x in (e.__cause__, e.__context__, getattr(e, "reason", None))
            if isinstance(x, BaseException)
        )
        found.extend(a for a in e.args if isinstance(a, BaseException))
    return False


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: try n waits a random time up to base * 2**n."""

    attempts: int = 8
    base: float = 1.0
    cap: float = 64.0

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        return float(rand() * min(self.cap, self.base * 2 ** (failures - 1)))


def reasons_of(error: HttpError) -> list[str]:
    """The `reason` of each error in Drive's JSON answer."""
    try:
        document = json.loads(error.content.decode("utf-8", "replace"))
        errors = document.get("error", {}).get("errors", [])
        return [str(e.get("reason", "")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return []


def classify(error: Exception, where: str, consent_hint: str) -> Transient:
    """Return the `Transient` for a failure worth another try; raise Capsule's error for any other.

    Raises `Gone` for a 404 and `Unsatisfiable` for a 416, which callers give their own meaning."""
    if isinstance(error, auth_errors.RefreshError):
        if error.retryable:
            return Transient("the token endpoint failed")
        # The cause carries the token endpoint's answer; nothing of it is needed, so it is left out.
        raise DestinationNeedsConsent(
            f"the Google Drive authorization for {where} was revoked or expired: run "
            f"`{consent_hint}` again to consent, then the copies resume"
        ) from None
    if isinstance(error, auth_errors.TransportError):
        return Transient("the token endpoint could not be reached", unreachable=_cannot_connect(error))
    if isinstance(error, HttpError):
        return _classify_http(error, where, consent_hint)
    if isinstance(error, OSError | http.client.HTTPException | httplib2.HttpLib2Error):
        return Transient(
            f"the connection failed ({type(error).__name__})", unreachable=_cannot_connect(error)
        )
    raise error


def _classify_http(error: HttpError, where: str, consent_hint: str) -> Transient:
    status = int(error.resp.status)
    reasons = reasons_of(error)
    if status == 404:
        raise Gone()
    if status == 416:
        raise Unsatisfiable()
    if status == 429 or (status == 403 and RATE_LIMIT_REASONS & set(reasons)):
        return Transient(f"rate limited ({status} {', '.join(reasons) or 'Too Many Requests'})", True)
    if status == 403 and "storageQuotaExceeded" in reasons:
        raise DiskFull(
            f"the Google Drive account holding {where} is out of storage: free space in Drive or buy "
            "more storage, then run the copy again"
        ) from error
    if status >= 500 or status == 408:
        return Transient(f"Drive answered {status}")
    if status == 401:
        raise DestinationNeedsConsent(
            f"Google Drive refuses Capsule's authorization for {where}: run `{consent_hint}` again to consent"
        ) from None
    what = ", ".join(reasons) or "no reason given"
    raise StorageUnavailable(f"Google Drive refused a request for {where}: {status} ({what})") from error


class Retrier:
    """Runs one Drive call at a time until it succeeds, a permanent error stops it, or the attempts
    run out."""

    def __init__(
        self,
        where: str,
        consent_hint: str,
        backoff: Backoff,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.where, self.consent_hint, self.backoff = where, consent_hint, backoff
        self.sleep, self.rand = sleep, rand

    def classify(self, error: Exception) -> Transient:
        return classify(error, self.where, self.consent_hint)

    def wait(self, failures: int, transient: Transient, what: str) -> None:
        """Sleep before try `failures + 1`, or raise when `failures` tries have failed."""
        attempts = (
            min(self.backoff.attempts, UNREACHABLE_ATTEMPTS)
            if transient.unreachable
            else self.backoff.attempts
        )
        if failures >= attempts:
            raise self.gave_up(transient, what, failures)
        delay = self.backoff.delay(failures, self.rand)
        log.info("drive request failed, trying again", what=what, reason=transient.reason,
                 failures=failures, delay=round(delay, 2))  # fmt: skip
        self.sleep(delay)

    def gave_up(self, transient: Transient, what: str, tries: int) -> CapsuleError:
        if transient.rate_limited and what.startswith("upload"):
            return RateLimited(
                f"Google Drive kept refusing uploads to {self.where} for its rate limits through {tries} "
                "tries: the daily upload cap (750 GB a day per account) is likely reached; the copy "
                "resumes when it is tried again later"
            )
        if transient.unreachable:
            return StorageUnavailable(
                f"Google Drive cannot be reached from this machine to {what} for {self.where} "
                f"({transient.reason}, {tries} tries): check the network connection (and the proxy, if "
                "CAPSULE_GDRIVE_ROOT_URL or HTTPS_PROXY names one); it is tried again later",
                retryable=True,
            )
        return StorageUnavailable(
            f"Google Drive failed to {what} for {self.where} {tries} times ({transient.reason}); "
            "it is tried again later",
            retryable=True,
        )

    def call(self, what: str, request: Callable[[], T]) -> T:
        """`request()` until it succeeds; `Gone` and `Unsatisfiable` reach the caller at once."""
        failures = 0
        while True:
            try:
                return request()
            except Exception as error:  # classify re-raises what it does not know
                transient = self.classify(error)
            failures += 1
            self.wait(failures, transient, what)
