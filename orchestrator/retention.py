"""Retention by itself: what `capsule serve` does after each backup when `retention.auto` is on.

After every backup the service sees completed, each kind's policy is applied (`capsule forget`, as
the actor `system:retention`), on a thread of its own so that the tick loop and the schedules never
wait for it. Once a day at most, when a snapshot was forgotten since the last prune, a prune job is
requested: the embedded worker (or a `capsule worker`) runs it beside the backups, which never wait
for it. A prune a day, not one an hour, because planning one reads every snapshot's list of blobs,
while an hour's forgetting frees about one snapshot's new data.

A failure is logged and tried again after the next backup; it never stops the service.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from capsule.domain.settings import BackupSettings
    from capsule.orchestrator.runtime import Runtime

log = structlog.get_logger(__name__)

ACTOR = "system:retention"
PRUNE_EVERY = timedelta(hours=24)
"""The least time between two prunes the service requests by itself."""


class RetentionKeeper:
    """A ticker of the service: applies the policies after each completed backup, prunes daily."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._seen: str | None = None
        """The newest completed backup the policies were applied after."""
        self._thread: threading.Thread | None = None

    def tick(self, now: datetime, document: BackupSettings) -> None:
        """Start applying the policies if a backup completed since they last were (and none is
        being applied now)."""
        if not document.retention.auto:
            return
        from capsule.orchestrator import projections  # noqa: PLC0415

        newest = projections.list_jobs(self.runtime.engine, limit=1, status="completed", job_type="backup")
        if not newest or newest[0]["job_id"] == self._seen:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._seen = str(newest[0]["job_id"])
        self._thread = threading.Thread(target=self.apply, args=(now,), name="retention", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Until the policies being applied now are applied (tests, and a stopping service)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def apply(self, now: datetime) -> None:
        """Apply the policies once, then request a prune if one is due; log, never raise."""
        from capsule.orchestrator.usecases.forget import ApplyRetention, apply_retention  # noqa: PLC0415

        try:
            report = apply_retention(self.runtime.settings, ApplyRetention(actor=ACTOR))
            log.info(
                "retention applied",
                forgotten=len(report.forgotten),
                kept=sum(1 for j in report.judged if j.keep),
            )
            job_id = self._prune_if_due(now)
            if job_id is not None:
                log.info("prune requested by retention", job=job_id)
        except Exception as e:
            from capsule.orchestrator.actors import describe  # noqa: PLC0415

            self._seen = None  # try again at the next tick
            log.warning("retention could not be applied; trying again later", error=describe(e))

    def _prune_if_due(self, now: datetime) -> str | None:
        """Request a prune if none was requested in the last day and a snapshot was forgotten
        since the last one; return its job id, or None."""
        from capsule.orchestrator import projections  # noqa: PLC0415
        from capsule.orchestrator.usecases.prune import repack_unused_percent  # noqa: PLC0415

        engine = self.runtime.engine
        last = projections.list_jobs(engine, limit=1, job_type="prune")
        since = last[0]["requested_at"] if last else None
        if since is not None and now - since < PRUNE_EVERY:
            return None
        forgotten = [
            mark["forgotten_at"]
            for mark in projections.snapshot_marks_of(engine).values()
            if mark["forgotten_at"] is not None
        ]
        if not any(since is None or at > since for at in forgotten):
            return None
        return self.runtime.request_prune(
            repack_unused_percent=repack_unused_percent(self.runtime.settings, self.runtime.engine),
            actor=ACTOR,
        )
