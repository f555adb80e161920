"""The scheduler side's reader of the bucket: claims, relay requests and results.

It runs in a thread of the scheduler process and never blocks the scheduler loop: what it
learns goes to the executor as events through a queue, which ``sync()`` drains. One LIST of
the inbox per poll finds every pending item; the poll is fast right after activity and slows
down when nothing happens, down to a slow idle rate when no job is outstanding.

Trust: a claim must be signed by a trusted worker key and embed a manifest signed by us for
the same job; every later request or result for that job must be signed by the same worker
key that holds the claim. Anything else is logged with its reason, removed, and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from edge_mailbox.executor import metrics
from edge_mailbox.executor.liveness import WorkerWatch
from edge_mailbox.executor.queue_sweep import QueueSweeper
from edge_mailbox.executor.relay import ExecutionApi, Replayed, is_run_call, route_allowed
from edge_mailbox.executor.settings import (
    EdgeMailboxConfigError,
    ExecutorSettings,
    load_worker_keys,
)
from edge_mailbox.mailbox.codec import Signed
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import check_job_id, new_id
from edge_mailbox.mailbox.models import (
    Claim,
    JobManifest,
    JobState,
    RelayAnswer,
    RelayCall,
    Revocation,
)
from edge_mailbox.mailbox.protocol import Lease, Mailbox
from edge_mailbox.mailbox.recent import RecentSet
from edge_mailbox.mailbox.relaycodec import (
    CALLBACK_DATA_PATH,
    encode_body,
    error_answer,
    open_call,
    open_callback_data,
    seal_answer,
)
from edge_mailbox.signer import KeyRing, Reason, SealError, SealKey, VerificationError

log = logging.getLogger(__name__)

# (kind, job_id, info): kind is "running", "success" or "failed"; the executor maps job ids
# to task-instance keys.
Event = tuple[str, str, Any]
TokenMinter = Callable[[str, str], str]  # (ti_id, scope) -> JWT
# (ti_id, job_id) -> whether Airflow's database has that task instance queued or running as
# that job: asked once for a job this scheduler did not queue (rebuilt from its claim).
CurrentCheck = Callable[[str, str], bool]
# A manifest's signature outlives its expiry by this leeway; a job's claim is kept (its
# tombstone) until then, so a replayed manifest meets it.
MANIFEST_LEEWAY = 60.0
# A worker stamps both its claim and its requests: only rounding separates them.
CLOCK_SLACK = 1.0
# How long a reconciler may hold a relay request before another may take it over, as a
# multiple of execution_api_timeout (a replay never takes longer than that): a scheduler that
# died between taking a request and answering it delays that task by this much, no more.
RELAY_LEASE_TIMEOUTS = 2.0
RELAY_LEASE_MARGIN = 10.0
# Polls of the inbox marker without a change after which the poll backs off (2 s at the
# default poll_interval of 50 ms).
QUIET_POLLS = 40
# Pages of the inbox one poll reads at most (1,000 items each).
INBOX_PAGES_PER_POLL = 3
# How long an item signed by an unknown key waits for its key to be enrolled (key files are
# read again every worker_check_interval) before it is deleted, unless inbox_item_timeout is
# shorter.
UNTRUSTED_GRACE = 300.0
# Refused and parked inbox keys remembered (so each is logged once), the oldest forgotten.
REMEMBERED_ITEMS = 10_000
REMEMBERED_QUEUES = 1_000


@dataclass
class Job:
    """What the scheduler side knows of one enqueue."""

    job_id: str
    ti_id: str
    queue: str
    manifest_key: str | None = None
    ti_key: Any = None
    token: str | None = None
    claim: Signed[Claim] | None = None
    pool_slots: int = 1
    enqueued_at: float = field(default_factory=time.time)
    finished: bool = False
    superseded: bool = False  # its task instance was queued again as a newer job
    finished_at: float | None = None
    succeeded: bool = False
    revoked: bool = False
    reported_running: bool = False
    # Queued by this scheduler, or adopted from a dead one: only then are its claim and
    # result reported to Airflow (and their notices consumed). A job another scheduler queued
    # is known here only to serve its relay calls; its notices are left for its owner.
    owned: bool = True
    check_result: bool = False  # adopted: its result may be in the bucket already
    seen_at: float = field(default_factory=time.time)
    # Rebuilt from the bucket after a scheduler restart: its answered requests were read
    # from the bucket when it was rebuilt.
    rebuilt: bool = False
    # Airflow's database says its try is over or was never this job's (a manifest replayed
    # after its job ended): every claim, call and result of it is refused.
    stale: bool = False
    cleaned: bool = False  # its objects are gone but its claim, kept as its tombstone
    answered: set[str] = field(default_factory=set)
    # The highest request id handled: ids increase within a job and its requests are
    # replayed in id order, so a lower one is a replay of one handled before.
    high_water: str = ""
    callback_data: dict | None = None  # an executor callback's data, sealed to us
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def worker(self) -> str | None:
        return self.claim.model.worker if self.claim else None

    @property
    def claimed_at(self) -> float | None:
        return self.claim.model.claimed_at if self.claim else None


class Reconciler:
    def __init__(
        self,
        mailbox: Mailbox,
        settings: ExecutorSettings,
        mint_token: TokenMinter,
        events: queue.Queue[Event],
        is_current: CurrentCheck | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.is_current = is_current
        self.settings = settings
        self.mint_token = mint_token
        self.events = events
        self.scheduler_keys = KeyRing([settings.signing_key.public])
        self.jobs: dict[str, Job] = {}
        self.jobs_lock = threading.Lock()
        self.api = ExecutionApi(settings.execution_api_url, settings.execution_api_timeout)
        self.pool = ThreadPoolExecutor(settings.relay_threads, thread_name_prefix="mailbox-relay")
        self.in_flight: set[str] = set()  # jobs a relay thread is serving
        self.look_again: set[str] = set()  # listed while in flight: list again after
        self.in_flight_lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mailbox-reconciler", daemon=True)
        self.relist = True  # LIST once at start: items may be waiting from before a restart
        self.hurry = False  # a job was just queued: poll fast, its claim comes soon
        self.deletions: list[str] = []  # inbox items and claimed manifests, deleted in batches
        self.deletions_lock = threading.Lock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()}"
        self.relay_lease = (
            settings.execution_api_timeout * RELAY_LEASE_TIMEOUTS + RELAY_LEASE_MARGIN
        )
        self.watch = WorkerWatch(
            mailbox,
            settings.worker_keys,
            settings.worker_timeout,
            check_interval=settings.worker_check_interval,
        )
        # Signed by a key not trusted (yet): kept, not acted on, for UNTRUSTED_GRACE.
        self.parked: RecentSet[str] = RecentSet(REMEMBERED_ITEMS)
        self.expired: set[str] = set()  # inbox items older than inbox_item_timeout, this LIST
        self.untrusted: set[str] = set()  # older than UNTRUSTED_GRACE, this LIST
        self.resume_after: str | None = None  # where the next LIST goes on, in a flood
        self.left: set[str] = set()  # notices left for the scheduler that owns their job
        # Request ids this reconciler replayed (recent ones): with several schedulers, each
        # id must appear in one reconciler's list only.
        self.relayed: deque[str] = deque(maxlen=100_000)
        self.last_watch = 0.0
        self.sweeper = QueueSweeper(mailbox, self.scheduler_keys)
        self.last_sweep = time.monotonic()
        self.queues: RecentSet[str] = RecentSet(REMEMBERED_QUEUES)  # every queue seen
        self.keys_loaded_at = time.monotonic()
        self.rejected: RecentSet[str] = RecentSet(REMEMBERED_ITEMS)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.flush_deletions()
        self.api.close()

    def track(self, job: Job) -> None:
        """A manifest was written: expect its claim soon, so poll fast."""
        with self.jobs_lock:
            self.jobs[job.job_id] = job
            self.queues.add(job.queue)
        self.hurry = True
        self.wake.set()

    def revoke(self, job_id: str, reason: str) -> None:
        """Stop a job: out of its queue, a revocation for workers, and its relay closed."""
        with self.jobs_lock:
            job = self.jobs.get(job_id)
        if job:
            with job.lock:
                job.finished = job.revoked = True
                job.finished_at = time.time()
        try:
            self.mailbox.put_revocation(
                Revocation(job_id=job_id, reason=reason, revoked_at=time.time()),
                self.settings.signing_key,
            )
            if job and job.manifest_key:
                self.mailbox.store.delete(job.manifest_key)
        except StoreError as exc:
            log.warning("edge-mailbox: revocation of %s not written yet: %s", job_id, exc)
        log.info("edge-mailbox: revoked job %s: %s", job_id, reason)

    def supersede(self, job_id: str) -> None:
        """A newer job runs the same task instance: this one's events are no longer reported
        (its relay stays open: a deferring task's last calls may still be in flight)."""
        with self.jobs_lock:
            job = self.jobs.get(job_id)
        if job:
            job.superseded = True

    def adopt(self, job_id: str, ti_id: str, queue_name: str, ti_key: Any) -> bool:
        """Track a job a previous scheduler queued, from the id Airflow kept for it."""
        try:
            check_job_id(job_id)
        except ValueError:
            return False
        with self.jobs_lock:
            job = self.jobs.setdefault(
                job_id, Job(job_id=job_id, ti_id=ti_id, queue=queue_name, rebuilt=True)
            )
        if job.ti_id != ti_id or job.stale:
            return False
        job.ti_key = ti_key
        job.owned = job.check_result = True
        job.finished = False  # known before only for its relay: its result is ours to report
        self.relist = True  # its notices, left for its owner, are ours now
        self.wake.set()
        return True

    def outstanding(self) -> int:
        with self.jobs_lock:
            return sum(1 for j in self.jobs.values() if j.owned and not j.finished)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        """Poll the inbox's change marker (a cheap conditional GET); LIST only when it rang,
        when an item is waiting for another try, or every ``list_interval`` as a safety net.

        While jobs are outstanding the marker is polled every ``poll_interval``, and after
        ``QUIET_POLLS`` polls in a row without a change (a job queued, an item listed, a relay
        call in flight) less and less often, down to five times that interval: long tasks
        call home only every few seconds, and each poll is a billed GET. Short tasks keep the
        fast rate, so a chain of them waits for nothing."""
        etag: str | None = None
        last_list = 0.0
        quiet = self.settings.poll_active
        unchanged = 0
        while not self.stopping.is_set():
            outstanding = self.outstanding()
            active = self.hurry
            self.hurry = False
            try:
                changed, etag = self.mailbox.inbox_changed(etag)
                now = time.monotonic()
                waiting = outstanding or self.parked or self.left
                due = waiting and now - last_list > self.settings.list_interval
                if changed or due or self.relist:
                    self.relist = False
                    last_list = now
                    active |= self.poll_once() > 0
            except StoreError as exc:
                log.warning("edge-mailbox: bucket unavailable (%s); retrying", exc)
                self.relist = True
            except Exception:
                log.exception("edge-mailbox reconciler: unexpected error; continuing")
                self.relist = True
            if time.monotonic() - self.last_watch > self.settings.worker_check_interval:
                self.last_watch = time.monotonic()
                self.check_workers()
            self.flush_deletions()
            unchanged = 0 if active or self.in_flight else unchanged + 1
            if unchanged < QUIET_POLLS:
                quiet = self.settings.poll_active
            else:
                quiet = min(quiet * 1.5, self.settings.poll_active * 5)
            self.wake.wait(quiet if outstanding else self.settings.poll_idle)
            self.wake.clear()

    def poll_once(self) -> int:
        """One LIST of the inbox (more pages only if over 1,000 items); act on each item.

        Claims are handled here. A job's relay requests are replayed by one relay thread, one
        after another in the order of their ids (the order the worker sent them), and its
        result is reported only after them: a task's terminal state is a request the worker
        does not wait for, and it must reach Airflow before the executor hears the job ended.
        A job whose thread is still busy is looked at again when that thread is done."""
        self.flush_deletions()  # what was handled must not be listed again
        items: list[tuple[str, str, str, str | None]] = []
        self.expired = set()
        self.untrusted = set()
        self.left = set()
        now = time.time()
        after = self.resume_after
        for _ in range(INBOX_PAGES_PER_POLL):
            page = self.mailbox.list_inbox(start_after=after)
            for entry in page.entries:
                try:
                    job_id, kind, request_id = self.mailbox.layout.parse_inbox(entry.key)
                except ValueError:
                    self._reject(entry.key, "unknown key in the inbox")
                    continue
                age = now - entry.last_modified.timestamp()
                if age > self.settings.inbox_item_timeout:
                    self.expired.add(entry.key)
                if age > min(UNTRUSTED_GRACE, self.settings.inbox_item_timeout):
                    self.untrusted.add(entry.key)
                items.append((entry.key, job_id, kind, request_id))
            after = page.last_key if page.truncated else None
            if after is None:
                break
        # A flooded inbox is read a few pages a poll, each poll going on where the last one
        # stopped: a poll costs the same however many items wait.
        self.resume_after = after
        self.relist |= after is not None
        results: dict[str, str | None] = dict.fromkeys(self._adopted_results())
        requests: dict[str, list[tuple[str, str]]] = {}
        handled = 0
        for key, job_id, kind, request_id in items:
            if key in self.parked:
                if key in self.untrusted:  # a bucket writer must not fill the inbox this way
                    self.parked.discard(key)
                    self._reject(key, "its signing key was never trusted")
                continue
            if kind == "claim":
                self._isolated(key, "claim", self._on_claim, key, job_id)
                handled += 1
            elif kind == "result":
                results[job_id] = key
            else:
                assert request_id
                known = self.jobs.get(job_id)
                if not (known and request_id in known.answered):  # else: answered since the LIST
                    requests.setdefault(job_id, []).append((key, request_id))
        for job_id in sorted(requests.keys() | results.keys()):
            with self.in_flight_lock:
                if job_id in self.in_flight:
                    self.look_again.add(job_id)
                    continue
                pending = sorted(requests.get(job_id, []), key=lambda r: r[1])
                if pending:
                    self.in_flight.add(job_id)
            if pending:
                self.pool.submit(self._serve_job, job_id, pending, results)
            else:
                self._isolated(results[job_id], "result", self._on_result, results[job_id], job_id)
            handled += len(pending) + (job_id in results)
        return handled

    def _isolated(self, key: str | None, what: str, handler: Callable[..., Any], *args: Any) -> Any:
        """Handle one inbox item so that nothing it holds can stop the others: any error but
        the bucket's own (the item is fine, the bucket is not: try again later) refuses and
        removes that one item, with the reason in the log."""
        try:
            return handler(*args)
        except StoreError:
            raise
        except Exception as exc:
            log.error("edge-mailbox: %s %s could not be handled", what, key or "", exc_info=True)
            self._reject(key, f"{what} could not be handled: {type(exc).__name__}: {exc}")
            return True

    def _delete_soon(self, key: str) -> None:
        """Handled inbox items and claimed manifests are deleted together, once per turn of
        the loop and before each LIST (one DeleteObjects instead of a DELETE each). One
        listed again in between is known as handled (answered, reported) and costs nothing."""
        with self.deletions_lock:
            self.deletions.append(key)

    def flush_deletions(self) -> None:
        with self.deletions_lock:
            keys, self.deletions = self.deletions, []
        if not keys:
            return
        try:
            if len(keys) == 1:
                self.mailbox.store.delete(keys[0])
                failed = []
            else:
                failed = self.mailbox.store.delete_many(keys)
        except StoreError as exc:
            log.warning("edge-mailbox: %d deletions wait: %s", len(keys), exc)
            with self.deletions_lock:
                self.deletions.extend(keys)
            return
        if failed:  # listed again and handled again: deleted on a later turn
            log.warning("edge-mailbox: the bucket refused to delete %s", failed[:10])

    def _adopted_results(self) -> list[str]:
        """An adopted job may have finished while no scheduler was watching, its notice
        consumed by the dead one: one HEAD of its result tells."""
        with self.jobs_lock:
            adopted = [j for j in self.jobs.values() if j.check_result]
        found = []
        for job in adopted:
            job.check_result = False
            try:
                claimed = self._job_from_claim(job.job_id)
                assert claimed and claimed.claim
                self.mailbox.store.head(self.mailbox.layout.result(job.job_id, claimed.claim.kid))
            except (NotFound, VerificationError, ProtocolError):
                continue  # not claimed (yet), or no result: its notices will tell
            found.append(job.job_id)
        return found

    def _leave_for_owner(self, key: str | None, job: Job, what: str) -> bool:
        """True if ``job`` is another scheduler's: its notice stays in the inbox for that
        scheduler (or for whichever adopts its tasks), until it has waited too long."""
        if job.stale:
            self._reject(key, f"{what} of a job whose try is over")
            return True
        if job.owned:
            return False
        if key and key in self.expired:
            self._reject(key, f"{what} of a job no scheduler here owns, left unread too long")
        elif key:
            self.left.add(key)
        return True

    def discover_claims(self, jobs: list[Job]) -> None:
        """Find claims whose inbox notice never came (the worker died right after claiming).

        Job ids sort by time, so one LIST of jobs/ after the oldest job we still see as
        unclaimed covers them all, however long the backlog of queued jobs."""
        waiting = sorted(
            j.job_id
            for j in jobs
            if j.claim is None and time.time() - j.enqueued_at > self.settings.worker_check_interval
        )
        if not waiting:
            return
        wanted = set(waiting)
        after = self.mailbox.layout.job_root(waiting[0]).rstrip("/")
        for _ in range(3):  # a few pages at most; the rest waits for the next check
            page = self.mailbox.store.list_page(
                f"{self.mailbox.layout.root}jobs/", start_after=after
            )
            for entry in page.entries:
                job_id = entry.key[len(f"{self.mailbox.layout.root}jobs/") :].split("/", 1)[0]
                if entry.key.endswith("/claim.jws") and job_id in wanted:
                    log.info("edge-mailbox: found claim of %s without its notice", job_id)
                    self._on_claim(None, job_id)
            if not page.truncated:
                return
            after = page.last_key

    def queued_per_queue(self) -> dict[str, int]:
        """Jobs written and not claimed yet, per queue (for the queued_jobs gauge)."""
        counts: dict[str, int] = {}
        with self.jobs_lock:
            for job in self.jobs.values():
                if not job.finished and job.claim is None:
                    counts[job.queue] = counts.get(job.queue, 0) + 1
        return counts

    def clean_up(self) -> None:
        """Remove the protocol objects of jobs finished long enough ago (responses, result,
        revocation, stray inbox items, the manifest), and forget the jobs: neither the bucket
        nor this process grows with the number of tasks ever run. Logs stay.

        A job's claim stays, and the job with it, until its manifest has expired: a manifest
        put back into its queue meanwhile meets the claim, and is never run twice."""
        now = time.time()
        with self.jobs_lock:
            for job in [j for j in self.jobs.values() if not j.owned and not j.stale]:
                if now - job.seen_at > self.settings.inbox_item_timeout:
                    del self.jobs[job.job_id]  # another scheduler's; its owner cleans it up
            due = [j for j in self.jobs.values() if not j.cleaned and self._cleanup_due(j, now)]
            gone = [
                j
                for j in self.jobs.values()
                if j.cleaned and now > j.enqueued_at + self.settings.manifest_ttl + MANIFEST_LEEWAY
            ]
        layout = self.mailbox.layout
        for job in due:
            if job.rebuilt:  # what it said before a restart is not known here: list it
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
            failed = self.mailbox.store.delete_many(keys)
            if failed:
                log.warning("edge-mailbox: could not delete %s", failed)
                continue
            job.cleaned = True
            log.debug("edge-mailbox: cleaned up job %s (%d objects)", job.job_id, len(keys))
        if not gone:
            return
        failed = set(self.mailbox.store.delete_many([layout.claim(j.job_id) for j in gone]))
        with self.jobs_lock:
            for job in gone:
                if layout.claim(job.job_id) not in failed:
                    self.jobs.pop(job.job_id, None)

    def _cleanup_due(self, job: Job, now: float) -> bool:
        if job.stale:  # never ours to report: its objects go after the failure delay
            return now - (job.finished_at or now) > self.settings.cleanup_failed_after
        if not (job.owned and job.finished_at):
            return False
        after = (
            self.settings.cleanup_success_after
            if job.succeeded
            else self.settings.cleanup_failed_after
        )
        return now - job.finished_at > after

    def reload_worker_keys(self) -> None:
        """Pick up enrolled and removed worker keys (.pub files) without a restart."""
        self.keys_loaded_at = time.monotonic()
        try:
            fresh = load_worker_keys(self.settings.worker_keys_spec)
        except EdgeMailboxConfigError as exc:
            log.error("edge-mailbox: keeping the trusted worker keys as they were: %s", exc)
            return
        added, removed = self.settings.worker_keys.replace_with(fresh)
        if added:
            self.parked.clear()  # what waited for a key gets another look
            self.relist = True
        if added or removed:
            log.info(
                "edge-mailbox: worker keys now trusted: +%s -%s",
                ",".join(sorted(added)) or "none",
                ",".join(sorted(removed)) or "none",
            )

    def check_workers(self) -> None:
        """Fail the jobs of workers that stopped heartbeating, and jobs no worker can take."""
        self.reload_worker_keys()
        if not self.watch.refresh():
            return
        metrics.gauge("live_workers", sum(self.watch.alive(w) for w in self.watch.last_seen))
        self.clean_up()
        self.sweep_queues()
        with self.jobs_lock:
            jobs = [j for j in self.jobs.values() if j.owned and not j.finished]
        try:
            self.discover_claims(jobs)
        except StoreError as exc:
            log.warning("edge-mailbox: cannot look for claims (%s)", exc)
        verdicts = self.watch.lost(jobs) + self.watch.unrunnable(
            jobs, min_age=self.settings.worker_check_interval
        )
        for job, reason in verdicts:
            with job.lock:
                if job.finished:
                    continue
                job.finished = True
                job.finished_at = time.time()
            log.error("edge-mailbox: failing job %s: %s", job.job_id, reason)
            metrics.incr("lost_workers" if job.claim else "unrunnable_jobs")
            self.events.put(("failed", job.job_id, reason))
            if job.claim is None and job.manifest_key:
                with contextlib.suppress(StoreError):
                    self.mailbox.store.delete(job.manifest_key)

    def sweep_queues(self) -> None:
        """Every ``queue_sweep_interval``: delete from the queues what no worker may run."""
        if time.monotonic() - self.last_sweep < self.settings.queue_sweep_interval:
            return
        self.last_sweep = time.monotonic()
        with self.jobs_lock:  # self.queues grows under this lock too
            own = {j.manifest_key for j in self.jobs.values() if j.manifest_key}
            names = list(self.queues)
        for name in names:
            try:
                self.sweeper.sweep(name, own)
            except StoreError as exc:
                log.warning("edge-mailbox: queue %s not swept: %s", name, exc)
                return

    def _refuse(self, key: str | None, what: str, exc: Exception) -> None:
        """A refused item is deleted, unless only its key is unknown: a worker enrolled a
        moment ago must not lose its claim or its call, so that item waits (parked) until the
        trusted keys change."""
        if key and isinstance(exc, VerificationError) and exc.reason is Reason.UNKNOWN_KEY:
            if key not in self.parked:
                log.warning("edge-mailbox: %s waits for its key to be trusted: %s", key, exc)
                self.parked.add(key)
            return
        self._reject(key, f"{what}: {exc}")

    def _reject(self, key: str | None, reason: str) -> None:
        if key is None:
            log.warning("edge-mailbox: %s", reason)
            return
        if key not in self.rejected:
            log.warning("edge-mailbox: ignoring %s: %s", key, reason)
            metrics.incr("refused")
            self.rejected.add(key)
        self._delete_soon(key)

    # -- claims ------------------------------------------------------------------------------

    def _job_from_claim(self, job_id: str) -> Job | None:
        """The job as the durable claim says, verified; rebuilt after a scheduler restart."""
        with self.jobs_lock:
            job = self.jobs.get(job_id)
        if job and job.claim:
            job.seen_at = time.time()
            return job
        try:
            claim = self.mailbox.read_claim(job_id, self.settings.worker_keys)
        except VerificationError as exc:
            # A worker enrolled a moment ago: look at the key files again (at most each 5 s).
            if exc.reason is not Reason.UNKNOWN_KEY or time.monotonic() - self.keys_loaded_at < 1:
                raise
            self.reload_worker_keys()
            claim = self.mailbox.read_claim(job_id, self.settings.worker_keys)
        if claim.model.job_id != job_id:
            raise ProtocolError(f"claim names job {claim.model.job_id}")
        # As of the claim: a job queued longer ago than manifest_ttl keeps its relay.
        manifest = self.mailbox.verify_manifest(
            claim.model.manifest.encode(),
            claim.model.queue,
            job_id,
            self.scheduler_keys,
            at=claim.issued_at,
        )
        if job is None:
            job = Job(
                job_id=job_id,
                ti_id=manifest.model.subject_id,
                queue=manifest.model.queue,
                pool_slots=manifest.model.pool_slots,
                enqueued_at=manifest.model.enqueued_at,
                rebuilt=True,
                owned=False,  # until this scheduler adopts its task instance
            )
            job.ti_key = _ti_key(manifest.model)
            job.manifest_key = self.mailbox.layout.manifest(
                manifest.model.queue, job_id, manifest.model.priority, manifest.model.enqueued_at
            )
            job.answered = self.mailbox.answered_requests(job_id)
            job.high_water = max(job.answered, default="")
            current = self.is_current is None or manifest.model.callback is not None
            if not (current or self.is_current(job.ti_id, job_id)):
                log.warning(
                    "edge-mailbox: job %s (%s) is not a try Airflow is running: its claim "
                    "and calls are refused",
                    job_id,
                    manifest.model.describe(),
                )
                job.stale = job.finished = True
                job.finished_at = time.time()
            with self.jobs_lock:
                self.jobs.setdefault(job_id, job)
                self.queues.add(job.queue)
                job = self.jobs[job_id]
        elif manifest.model.subject_id != job.ti_id:
            raise ProtocolError("the claimed manifest is for another task instance")
        if manifest.model.callback:
            job.callback_data = manifest.model.callback.get("data")
        job.claim = claim
        return job

    def _on_claim(self, key: str | None, job_id: str) -> None:
        try:
            job = self._job_from_claim(job_id)
        except NotFound:
            self._reject(key, "claim notice without a claim")
            return
        except (VerificationError, ProtocolError) as exc:
            self._refuse(key, "claim refused", exc)
            return
        if self._leave_for_owner(key, job, "claim notice"):
            return
        self._report_claimed(job)
        if key:
            self._delete_soon(key)

    def _report_claimed(self, job: Job) -> None:
        """Once per job: tell Airflow it runs, and take its manifest out of the queue."""
        assert job.claim
        with job.lock:
            if job.reported_running or job.revoked or not job.owned:
                return
            job.reported_running = True
        log.info("edge-mailbox: job %s claimed by %s", job.job_id, job.claim.model.worker)
        metrics.timing("claim_latency", job.claim.model.claimed_at - job.enqueued_at)
        self.events.put(("running", job.job_id, job.claim.model.worker))
        if job.manifest_key:
            self._delete_soon(job.manifest_key)

    # -- results -----------------------------------------------------------------------------

    def _on_result(self, key: str | None, job_id: str) -> None:
        try:
            job = self._job_from_claim(job_id)
        except NotFound:
            self._reject(key, "result notice without a claim")
            return
        except (VerificationError, ProtocolError) as exc:
            self._refuse(key, "result refused", exc)
            return
        assert job and job.claim
        try:
            result = self.mailbox.read_result(job_id, job.claim.kid, self.settings.worker_keys)
        except NotFound:  # the claim holder's notice comes again with its result
            self._reject(key, "result notice without the claim holder's result")
            return
        except (VerificationError, ProtocolError) as exc:
            if isinstance(exc, VerificationError) and exc.reason is Reason.BAD_SIGNATURE:
                # Not the claim holder's: its notice stays, so that its own result (if it
                # writes it again) is still read; it goes after inbox_item_timeout.
                log.warning("edge-mailbox: result of %s refused: %s", job_id, exc)
                if key and key in self.expired:
                    self._reject(key, f"result refused: {exc}")
                elif key:
                    self.left.add(key)
                return
            self._refuse(key, "result refused", exc)
            return
        if not job.owned:  # refuse its later relay calls, but report nothing
            job.finished = True
            self._leave_for_owner(key, job, "result notice")
            return
        if not job.finished:
            job.finished = True
            job.finished_at = time.time()
            job.succeeded = result.model.state is JobState.SUCCESS
            state = "success" if job.succeeded else "failed"
            log.info(
                "edge-mailbox: job %s finished: %s (exit %s)", job_id, state, result.model.exit_code
            )
            self.events.put((state, job_id, result.model.message or None))
        if key:
            self._delete_soon(key)

    # -- relay -------------------------------------------------------------------------------

    def _serve_job(
        self, job_id: str, requests: list[tuple[str, str]], results: dict[str, str | None]
    ) -> None:
        """A relay thread: the job's requests in order, then its result if it was listed.
        Stops at a request another reconciler is answering (or a bucket error), so that no
        later call overtakes it; the inbox is listed again soon."""
        try:
            for key, request_id in requests:
                if not self._isolated(
                    key, "relay request", self._on_request, key, job_id, request_id
                ):
                    self.relist = True
                    return
            if job_id in results:
                self._isolated(results[job_id], "result", self._on_result, results[job_id], job_id)
        except StoreError as exc:
            log.warning("edge-mailbox: relay for %s postponed, bucket unavailable: %s", job_id, exc)
            self.relist = True
        except Exception:
            log.exception("edge-mailbox: relay for %s failed", job_id)
        finally:
            with self.in_flight_lock:
                self.in_flight.discard(job_id)
                if job_id in self.look_again:  # listed again while this thread was busy
                    self.look_again.discard(job_id)
                    self.relist = True
            self.wake.set()

    def _on_request(self, key: str, job_id: str, request_id: str) -> bool:
        """Replay one relay request and answer it. False only when another reconciler holds
        it (the job's later calls must wait); anything refused is dealt with: True."""
        started = time.monotonic()
        try:
            job = self._job_from_claim(job_id)
        except NotFound:
            self._reject(key, "relay request for a job nobody claimed")
            return True
        except (VerificationError, ProtocolError) as exc:
            self._refuse(key, "relay request refused", exc)
            return True
        try:
            request = self.mailbox.read_request(job_id, request_id, self.settings.worker_keys)
        except NotFound:
            # Listed, then answered and deleted by another relay thread before this one got
            # to it: nothing to do.
            log.debug("edge-mailbox: %s was answered meanwhile", key)
            return True
        except (VerificationError, ProtocolError) as exc:
            self._refuse(key, "relay request refused", exc)
            return True
        assert job and job.claim
        if request.kid != job.claim.kid or request.model.job_id != job_id:
            self._reject(key, f"relay request signed by {request.kid}, not the claim holder")
            return True
        too_old = self._too_old(job, request.model.sent_at)
        if too_old:
            self._reject(key, f"relay request {too_old}")
            return True
        self._report_claimed(job)  # in case its claim notice is late or lost
        replay_ms = 0.0
        with job.lock:  # one call at a time per job, in arrival order of the poll
            if request_id in job.answered:
                self._delete_soon(key)
                return True
            if request_id <= job.high_water:
                self._reject(key, "relay request put back after a later one was handled")
                return True
            lease = self.mailbox.take_request(job_id, request_id, self.owner, self.relay_lease)
            if not lease:
                log.debug("edge-mailbox: %s is being answered by another reconciler", key)
                return False
            # A lease that existed: a reconciler (this one before a restart, a dead peer) took
            # the request before. Only the bucket knows whether it answered it.
            if lease is Lease.RESUMED and self.mailbox.answered(job_id, request_id):
                log.info("edge-mailbox: %s was answered before; not replayed", key)
                job.answered.add(request_id)
                job.high_water = max(job.high_water, request_id)
                self._delete_soon(key)
                return True
            job.high_water = max(job.high_water, request_id)
            seal_key = SealKey.derive(self.settings.signing_key.seed(), job_id)
            try:
                call = open_call(
                    request.model,
                    seal_key,
                    self.mailbox.seal_context(job_id, request_id, "request"),
                )
            except (SealError, ProtocolError) as exc:
                self._reject(key, f"relay request cannot be opened: {exc}")
                return True
            if job.revoked:
                answer = error_answer(409, "the job was revoked by the scheduler")
            elif job.finished:
                answer = error_answer(409, "the job has already finished")
            elif call.path == CALLBACK_DATA_PATH and call.method == "GET":
                answer = self._callback_data(job, seal_key)
            elif not route_allowed(
                call.method, call.path, job.ti_id, task=job.ti_key, query=call.query
            ):
                log.warning("edge-mailbox: job %s: refused %s %s", job_id, call.method, call.path)
                answer = error_answer(403, f"{call.method} {call.path} is not a relayed route")
            else:
                if is_run_call(call, job.ti_id):
                    token = self.mint_token(job.ti_id, "workload")
                else:
                    token = job.token or self.mint_token(job.ti_id, "execution")
                t0 = time.monotonic()
                replayed = self._replay(call, token, request.model.awaited)
                replay_ms = (time.monotonic() - t0) * 1000
                if replayed.refreshed_token:
                    job.token = replayed.refreshed_token
                elif is_run_call(call, job.ti_id):
                    job.token = None
                answer = replayed.answer
            response = seal_answer(
                answer,
                job.claim.model.seal_key,
                self.mailbox.seal_context(job_id, request_id, "response"),
                job_id,
                request_id,
            )
            try:
                self.mailbox.put_response(response, self.settings.signing_key)
            except AlreadyExists:
                log.info("edge-mailbox: %s was already answered", key)
            job.answered.add(request_id)
            self.relayed.append(request_id)
            self._delete_soon(key)
        metrics.timing("relay_latency", time.time() - request.model.sent_at)
        log.debug(
            "edge-mailbox: relayed %s %s for %s -> %s in %.0f ms (%.0f ms after it was sent; "
            "%.0f ms in the Execution API)",
            call.method,
            call.path,
            job_id,
            answer.status,
            (time.monotonic() - started) * 1000,
            (time.time() - request.model.sent_at) * 1000,
            replay_ms,
        )
        if not request.model.awaited and answer.status >= 400:
            # Status and reason only: an error body may echo what the task sent (a 422 quotes
            # its input), and that must not reach the scheduler's log.
            log.warning(
                "edge-mailbox: job %s: the Execution API answered %s %s to %s %s, which the "
                "worker did not wait for",
                job_id,
                answer.status,
                _phrase(answer.status),
                call.method,
                call.path,
            )
        return True

    def _replay(self, call: RelayCall, token: str, awaited: bool) -> Replayed:
        """Replay a call. One the worker waits for is replayed once (the Task SDK retries a
        5xx itself); one it does not wait for is retried here on a 5xx, with backoff, for up
        to ``execution_api_timeout`` after the first try (within the relay lease), since
        nobody else will."""
        give_up = time.monotonic() + self.settings.execution_api_timeout
        replayed = self.api.replay(call, token)
        pause = 0.5
        while not awaited and replayed.answer.status >= 500 and time.monotonic() < give_up:
            if self.stopping.wait(pause):
                break
            pause = min(pause * 2, 8.0)
            replayed = self.api.replay(call, token)
        return replayed

    def _callback_data(self, job: Job, seal_key: SealKey) -> RelayAnswer:
        """An executor callback's data, for the worker that claimed it (sealed to it as the
        answer is): the manifest carries it sealed to this side only."""
        if not job.callback_data:
            return error_answer(404, "this job is no callback")
        try:
            data = open_callback_data(
                job.callback_data, seal_key, self.mailbox.callback_context(job.job_id)
            )
        except SealError as exc:
            return error_answer(422, f"the callback's data cannot be opened: {exc}")
        return RelayAnswer(
            status=200, headers={"content-type": "application/json"}, body=encode_body(data)
        )

    def _too_old(self, job: Job, sent_at: float) -> str:
        """Why a request is too old to replay ("" if it is not): sent before its job was
        claimed (a claim is made before any call), or longer ago than the worker waits."""
        assert job.claim
        if sent_at < job.claim.model.claimed_at - CLOCK_SLACK:
            return "was sent before its job was claimed"
        age = time.time() - sent_at
        if age > self.settings.relay_request_max_age:
            return f"was sent {age:.0f} s ago (relay_request_max_age)"
        return ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _ti_key(manifest: JobManifest) -> Any:
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
