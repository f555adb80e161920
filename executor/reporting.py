"""Claims and results, verified and turned into what Airflow hears: a job runs, it ended.

Trust: a claim must be signed by a trusted worker key and embed a manifest signed by us for
the same job, valid as of the claim; a result must be the claim holder's (read at its key
id, signed by it). A job this scheduler did not queue (a restart, a peer's) is rebuilt from
its claim; one Airflow does not run is stale, and nothing of it is believed. Everything
refused is logged with its reason and removed, except what may still become valid (an
unknown key, parked; another scheduler's notice, left for it).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from edge_mailbox.executor import metrics
from edge_mailbox.executor.inbox import Inbox, Item
from edge_mailbox.executor.jobs import Job, JobTable, Phase
from edge_mailbox.executor.trust import TrustedWorkers
from edge_mailbox.mailbox.errors import NotFound, ProtocolError
from edge_mailbox.mailbox.models import JobManifest, JobState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, Reason, VerificationError

log = logging.getLogger(__name__)

# (kind, job_id, info): kind is "running", "success" or "failed"; the executor maps job ids
# to task-instance keys through the job table.
Event = tuple[str, str, Any]
# (ti_id, job_id) -> whether Airflow may still run that task instance as that job: asked
# once for a job this scheduler did not queue (rebuilt from its claim).
CurrentCheck = Callable[[str, str], bool]


class Reporter:
    def __init__(
        self,
        mailbox: Mailbox,
        jobs: JobTable,
        inbox: Inbox,
        trust: TrustedWorkers,
        scheduler_keys: KeyRing,
        events: queue.Queue[Event],
        is_current: CurrentCheck | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.jobs = jobs
        self.inbox = inbox
        self.trust = trust
        self.scheduler_keys = scheduler_keys
        self.events = events
        self.is_current = is_current

    # -- the claim: who runs a job -----------------------------------------------------------

    def job_from_claim(self, job_id: str) -> Job:
        """The job as its durable claim says, verified; rebuilt if this scheduler did not
        queue it. Raises NotFound, VerificationError or ProtocolError."""
        job = self.jobs.get(job_id)
        if job and job.claim:
            job.seen_at = time.time()
            return job
        try:
            claim = self.mailbox.read_claim(job_id, self.trust.keys)
        except VerificationError as exc:
            if exc.reason is not Reason.UNKNOWN_KEY or not self.trust.reload_for_unknown_key():
                raise
            claim = self.mailbox.read_claim(job_id, self.trust.keys)
        if claim.model.job_id != job_id:
            raise ProtocolError(f"claim names job {claim.model.job_id}")
        # As of the claim: a job queued longer ago than manifest_ttl keeps its relay.
        manifest = self.mailbox.verify_manifest(
            claim.model.manifest.encode(),
            claim.model.queue,
            job_id,
            self.scheduler_keys,
            at=claim.issued_at,
        ).model
        if job is None:
            job = self.jobs.add_rebuilt(self._rebuild(job_id, manifest))
        elif manifest.subject_id != job.ti_id:
            raise ProtocolError("the claimed manifest is for another task instance")
        if manifest.callback:
            job.callback_data = manifest.callback.get("data")
        job.connection_test = manifest.connection_test is not None
        job.claim = claim
        return job

    def _rebuild(self, job_id: str, manifest: JobManifest) -> Job:
        job = Job(
            job_id=job_id,
            ti_id=manifest.subject_id,
            queue=manifest.queue,
            ti_key=ti_key(manifest),
            manifest_key=self.mailbox.layout.manifest(
                manifest.queue, job_id, manifest.priority, manifest.enqueued_at
            ),
            pool_slots=manifest.pool_slots,
            enqueued_at=manifest.enqueued_at,
            rebuilt=True,
            owned=False,  # until this scheduler adopts its task instance
        )
        # What was answered before this scheduler knew the job: never replayed again.
        job.answered = self.mailbox.answered_requests(job_id)
        job.high_water = max(job.answered, default="")
        # A task's try only: a callback has no try, and a connection test's credentials are
        # handed out once by the Execution API itself (a second fetch is refused, 409).
        checkable = (
            self.is_current is not None
            and manifest.callback is None
            and manifest.connection_test is None
        )
        if checkable and not self.is_current(job.ti_id, job_id):
            log.warning(
                "edge-mailbox: job %s (%s) is not a try Airflow is running: its claim and "
                "calls are refused",
                job_id,
                manifest.describe(),
            )
            job.phase, job.finished_at = Phase.STALE, time.time()
        return job

    def on_claim(self, job_id: str, item: Item | None) -> None:
        key = item.key if item else None
        try:
            job = self.job_from_claim(job_id)
        except NotFound:
            self.inbox.reject(key, "claim notice without a claim")
            return
        except (VerificationError, ProtocolError) as exc:
            self.inbox.refuse(key, "claim refused", exc)
            return
        if self._not_ours(job, item, "claim notice"):
            return
        self.report_claimed(job)
        self.inbox.done(key)

    def report_claimed(self, job: Job) -> None:
        """Once per job: tell Airflow it runs, and take its manifest out of the queue."""
        assert job.claim
        if not self.jobs.mark_running(job):
            return
        log.info("edge-mailbox: job %s claimed by %s", job.job_id, job.claim.model.worker)
        metrics.timing("claim_latency", job.claim.model.claimed_at - job.enqueued_at)
        self.events.put(("running", job.job_id, job.claim.model.worker))
        self.inbox.done(job.manifest_key)

    def discover_claims(self, jobs: list[Job], min_age: float) -> None:
        """Find claims whose inbox notice never came (the worker died right after claiming).

        Job ids sort by time, so one LIST of jobs/ after the oldest job we still see as
        unclaimed covers them all, however long the backlog of queued jobs."""
        now = time.time()
        waiting = sorted(
            j.job_id for j in jobs if j.claim is None and now - j.enqueued_at > min_age
        )
        if not waiting:
            return
        wanted = set(waiting)
        layout = self.mailbox.layout
        after = layout.job_root(waiting[0]).rstrip("/")
        for _ in range(3):  # a few pages at most; the rest waits for the next check
            page = self.mailbox.store.list_page(layout.jobs, start_after=after)
            for entry in page.entries:
                try:
                    job_id, kind = layout.parse_job_key(entry.key)
                except ValueError:  # a stray object under jobs/: the sweep's, not ours
                    continue
                if kind == "claim" and job_id in wanted:
                    log.info("edge-mailbox: found claim of %s without its notice", job_id)
                    self.on_claim(job_id, None)
            if not page.truncated:
                return
            after = page.last_key

    # -- the result: how a job ended ---------------------------------------------------------

    def on_result(self, job_id: str, item: Item | None) -> None:
        key = item.key if item else None
        try:
            job = self.job_from_claim(job_id)
        except NotFound:
            self.inbox.reject(key, "result notice without a claim")
            return
        except (VerificationError, ProtocolError) as exc:
            self.inbox.refuse(key, "result refused", exc)
            return
        assert job.claim
        try:
            result = self.mailbox.read_result(job_id, job.claim.kid, self.trust.keys)
        except NotFound:  # the claim holder's notice comes again with its result
            self.inbox.reject(key, "result notice without the claim holder's result")
            return
        except VerificationError as exc:
            if exc.reason is not Reason.BAD_SIGNATURE:
                self.inbox.refuse(key, "result refused", exc)
                return
            # Not the claim holder's: its notice stays, so that the holder's own result (if
            # it writes it again) is still read; it goes after inbox_item_timeout.
            log.warning("edge-mailbox: result of %s refused: %s", job_id, exc)
            self.inbox.leave(key, bool(item and item.expired), f"result refused: {exc}")
            return
        except ProtocolError as exc:
            self.inbox.refuse(key, "result refused", exc)
            return
        ended = Phase.SUCCEEDED if result.model.state is JobState.SUCCESS else Phase.FAILED
        if not job.owned:  # its later relay calls are refused, but nothing is reported
            self.jobs.finish(job, ended)
            self._not_ours(job, item, "result notice")
            return
        if self.jobs.finish(job, ended):
            state = "success" if ended is Phase.SUCCEEDED else "failed"
            log.info(
                "edge-mailbox: job %s finished: %s (exit %s)", job_id, state, result.model.exit_code
            )
            self.events.put((state, job_id, result.model.message or None))
        self.inbox.done(key)

    def adopted_results(self) -> list[str]:
        """An adopted job may have finished while no scheduler was watching, its notice
        consumed by the dead one: one HEAD of its result tells."""
        found = []
        for job in self.jobs.take_adopted():
            try:
                claimed = self.job_from_claim(job.job_id)
                assert claimed.claim
                self.mailbox.store.head(self.mailbox.layout.result(job.job_id, claimed.claim.kid))
            except (NotFound, VerificationError, ProtocolError):
                continue  # not claimed (yet), or no result: its notices will tell
            found.append(job.job_id)
        return found

    def fail(self, job: Job, reason: str) -> None:
        """A job no worker will finish (its worker was lost, or none can run it)."""
        if not self.jobs.finish(job, Phase.FAILED):
            return
        log.error("edge-mailbox: failing job %s: %s", job.job_id, reason)
        metrics.incr("lost_workers" if job.claim else "unrunnable_jobs")
        self.events.put(("failed", job.job_id, reason))

    def _not_ours(self, job: Job, item: Item | None, what: str) -> bool:
        """True if the notice is not this scheduler's to act on: a stale job's (removed), or
        another scheduler's (left in the inbox for it, or for whichever adopts its tasks)."""
        key = item.key if item else None
        if job.phase is Phase.STALE:
            self.inbox.reject(key, f"{what} of a job whose try is over")
            return True
        if job.owned:
            return False
        self.inbox.leave(key, bool(item and item.expired), f"{what} of a job no scheduler owns")
        return True


def ti_key(manifest: JobManifest) -> Any:
    """The key Airflow knows the job's task instance (or callback, or connection test) by."""
    if manifest.connection_test:
        from airflow.models.connection_test import ConnectionTestKey

        return ConnectionTestKey(id=manifest.subject_id)
    if manifest.callback:
        from airflow.models.callback import CallbackKey

        return CallbackKey(id=manifest.subject_id)
    from airflow.models.taskinstancekey import TaskInstanceKey

    ti = manifest.ti
    return TaskInstanceKey(
        dag_id=ti["dag_id"],
        task_id=ti["task_id"],
        run_id=ti["run_id"],
        try_number=int(ti["try_number"]),
        map_index=int(ti.get("map_index", -1)),
    )
