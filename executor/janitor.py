"""What keeps the bucket and this process from growing with the number of tasks ever run:
the objects of finished jobs are deleted (logs stay: they have their own lifecycle rule),
and so is what no worker may run from the queues.

A job's claim stays, and the job with it, until its manifest has expired: a manifest put
back into its queue meanwhile meets the claim, and is never run twice.
"""

from __future__ import annotations

import logging
import time

from edge_mailbox.executor.jobs import Job, JobTable
from edge_mailbox.executor.queue_sweep import QueueSweeper
from edge_mailbox.executor.settings import ExecutorSettings
from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing

log = logging.getLogger(__name__)


class Janitor:
    def __init__(
        self, mailbox: Mailbox, settings: ExecutorSettings, jobs: JobTable, keys: KeyRing
    ) -> None:
        self.mailbox = mailbox
        self.settings = settings
        self.jobs = jobs
        self.sweeper = QueueSweeper(mailbox, keys)
        self.last_sweep = time.monotonic()

    def clean_up(self) -> None:
        """Delete the objects of jobs finished long enough ago (responses, leases, result,
        revocation, stray inbox notices, the manifest), then, once its manifest has expired,
        each cleaned job's claim; and forget those jobs."""
        due, gone = self.jobs.cleanup_due(self.settings, time.time())
        for job in due:
            keys = self._objects_of(job)
            failed = self.mailbox.store.delete_many(keys)
            if failed:
                log.warning("edge-mailbox: could not delete %s", failed)
                continue
            self.jobs.mark_cleaned(job)
            log.debug("edge-mailbox: cleaned up job %s (%d objects)", job.job_id, len(keys))
        if not gone:
            return
        layout = self.mailbox.layout
        failed = set(self.mailbox.store.delete_many([layout.claim(j.job_id) for j in gone]))
        self.jobs.forget([j.job_id for j in gone if layout.claim(j.job_id) not in failed])

    def _objects_of(self, job: Job) -> list[str]:
        layout = self.mailbox.layout
        if job.rebuilt:  # what it said before this scheduler knew it: list it
            keys = [e.key for e in self.mailbox.store.list_all(layout.job_root(job.job_id))]
        else:  # every object of a job we watched has a key we can name: no LIST
            keys = [
                *([layout.result(job.job_id, job.claim.kid)] if job.claim else []),
                layout.revocation(job.job_id),
                layout.inbox_claim(job.job_id),
                layout.inbox_result(job.job_id),
                *(layout.relay_response(job.job_id, r) for r in job.answered),
                *(layout.relay_lease(job.job_id, r) for r in job.answered),
            ]
        keys = [k for k in keys if k != layout.claim(job.job_id)]
        if job.manifest_key:
            keys.append(job.manifest_key)
        return keys

    def sweep_queues(self) -> None:
        """Every ``queue_sweep_interval``: delete from the queues what no worker may run."""
        if time.monotonic() - self.last_sweep < self.settings.queue_sweep_interval:
            return
        self.last_sweep = time.monotonic()
        own = self.jobs.manifest_keys()
        for name in self.jobs.queues():
            try:
                self.sweeper.sweep(name, own)
            except StoreError as exc:
                log.warning("edge-mailbox: queue %s not swept: %s", name, exc)
                return
