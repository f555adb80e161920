"""Finished jobs' results on their way to the bucket: each waits here, log and result, while
the bucket is unreachable, and they are delivered in order with one inbox ring for all of
those delivered in one pass."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.models import JobManifest, JobResult, JobState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import SigningKey
from edge_mailbox.worker.logship import LogShipper
from edge_mailbox.worker.runners import JobHandle

log = logging.getLogger("edge_mailbox.worker")


@dataclass
class RunningJob:
    manifest: JobManifest
    process: JobHandle
    started_at: float
    stats_path: Path
    shipper: LogShipper | None = None
    killed: str = ""  # why the worker killed it, if it did
    term_sent_at: float | None = None


@dataclass
class PendingReport:
    """A finished job whose log and result are not in the bucket yet."""

    job: RunningJob
    exit_code: int
    finished_at: float


class Outbox:
    def __init__(self, mailbox: Mailbox, worker: str, key: SigningKey) -> None:
        self.mailbox = mailbox
        self.worker = worker
        self.key = key
        self.pending: list[PendingReport] = []

    def __bool__(self) -> bool:
        return bool(self.pending)

    def jobs(self) -> Iterator[RunningJob]:
        return (report.job for report in self.pending)

    def add(self, job: RunningJob, exit_code: int, finished_at: float) -> None:
        self.pending.append(PendingReport(job, exit_code, finished_at))

    def deliver(self) -> None:
        """Deliver finished jobs' results, then ring the inbox once for all of them."""
        delivered = False
        try:
            for report in list(self.pending):
                try:
                    self._deliver(report)
                except StoreError as exc:
                    log.warning(
                        "result of %s waits: bucket unavailable (%s)",
                        report.job.manifest.job_id,
                        exc,
                    )
                    return
                self.pending.remove(report)
                delivered = True
        finally:
            if delivered:
                try:
                    self.mailbox.ring_inbox()
                except StoreError as exc:  # the scheduler side also LISTs now and then
                    log.warning("inbox ring failed (%s); results are found on a later LIST", exc)

    def _deliver(self, report: PendingReport) -> None:
        manifest = report.job.manifest
        chunks = report.job.shipper.finish() if report.job.shipper else 0
        ok = report.exit_code == 0 and not report.job.killed
        message = report.job.killed or (
            "" if ok else f"task process exited with {report.exit_code}"
        )
        result = JobResult(
            job_id=manifest.job_id,
            worker=self.worker,
            state=JobState.SUCCESS if ok else JobState.FAILED,
            exit_code=report.exit_code,
            started_at=report.job.started_at,
            finished_at=report.finished_at,
            message=message,
            log_chunks=chunks,
        )
        self.mailbox.put_result(result, self.key)
        self.mailbox.notify(self.mailbox.layout.inbox_result(manifest.job_id), ring=False)
