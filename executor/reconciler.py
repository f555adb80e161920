"""The scheduler side's reader of the bucket: one loop that reads, decides and reports.

It runs in a thread of the scheduler process and never blocks the scheduler loop: what it
learns goes to the executor as events through a queue, which ``sync()`` drains. Each turn:

1. poll the inbox marker (a conditional GET); when it rang (or an item waits, or as a safety
   net every ``list_interval``) read the inbox's next pages (inbox.py);
2. hand each claim to the reporter (reporting.py: verified, reported once), and each job's
   relay requests and result to a relay thread of the replayer (replayer.py: replayed once,
   in order, the result reported after them);
3. every ``worker_check_interval``: reload trusted keys (trust.py), read the workers'
   liveness (liveness.py), write the fleet snapshot for the dashboard (fleet_snapshot.py),
   fail the jobs of lost workers and those no worker can take, clean up and sweep
   (janitor.py);
4. delete what was handled, in one batch; sleep.

Which part owns what: docs/architecture.md. The job table (jobs.py) is the one owner of
every job's phase.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from edge_mailbox.executor import metrics
from edge_mailbox.executor.fleet_snapshot import SnapshotWriter
from edge_mailbox.executor.inbox import Inbox, Item
from edge_mailbox.executor.janitor import Janitor
from edge_mailbox.executor.jobs import Job, JobTable, Phase
from edge_mailbox.executor.liveness import WorkerWatch
from edge_mailbox.executor.replayer import NO_RESULT, Replayer, TokenMinter
from edge_mailbox.executor.reporting import CurrentCheck, Event, Reporter
from edge_mailbox.executor.settings import ExecutorSettings
from edge_mailbox.executor.trust import TrustedWorkers
from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.layout import check_job_id
from edge_mailbox.mailbox.models import Revocation
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.recent import RecentSet
from edge_mailbox.signer import KeyRing

__all__ = ["QUIET_POLLS", "Event", "Job", "Reconciler"]

log = logging.getLogger(__name__)

# Polls of the inbox marker without a change after which the poll backs off (2 s at the
# default poll_interval of 50 ms), down to five times poll_interval.
QUIET_POLLS = 40


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
        self.settings = settings
        self.events = events
        self.jobs = JobTable()
        self.inbox = Inbox(mailbox, settings.inbox_item_timeout)
        self.trust = TrustedWorkers(settings, on_added=self._keys_added)
        scheduler_keys = KeyRing([settings.signing_key.public])
        self.reporter = Reporter(
            mailbox, self.jobs, self.inbox, self.trust, scheduler_keys, events, is_current
        )
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.replayer = Replayer(
            mailbox, settings, self.reporter, self.inbox, mint_token, self.stopping, self._done
        )
        self.janitor = Janitor(mailbox, settings, self.jobs, scheduler_keys)
        self.watch = WorkerWatch(
            mailbox,
            settings.worker_keys,
            settings.worker_timeout,
            check_interval=settings.worker_check_interval,
        )
        self.fleet = SnapshotWriter(
            mailbox,
            settings.signing_key,
            self.jobs,
            self.watch,
            settings.fleet_snapshot_interval,
            settings.worker_timeout,
        )
        self.thread = threading.Thread(target=self._run, name="mailbox-reconciler", daemon=True)
        self.relist = True  # LIST once at start: items may be waiting from before a restart
        self.hurry = False  # a job was just queued: poll fast, its claim comes soon
        self.last_check = 0.0

    # -- what the executor (and tests) use --------------------------------------------------

    @property
    def is_current(self) -> CurrentCheck | None:
        return self.reporter.is_current

    @is_current.setter
    def is_current(self, check: CurrentCheck | None) -> None:
        self.reporter.is_current = check

    @property
    def parked(self) -> RecentSet[str]:
        return self.inbox.parked

    @property
    def rejected(self) -> RecentSet[str]:
        return self.inbox.rejected

    @property
    def relayed(self) -> list[str]:
        return list(self.replayer.relayed)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout)
        self.replayer.close()
        self.inbox.flush()

    def track(self, job: Job) -> None:
        """A manifest was written: expect its claim soon, so poll fast."""
        self.jobs.add(job)
        self.hurry = True
        self.wake.set()

    def revoke(self, job_id: str, reason: str) -> None:
        """Stop a job: out of its queue, a revocation for workers, and its relay closed."""
        job = self.jobs.get(job_id)
        if job:
            self.jobs.finish(job, Phase.REVOKED)
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
        self.jobs.supersede(job_id)

    def adopt(self, job_id: str, ti_id: str, queue_name: str, ti_key: object) -> bool:
        """Track a job a previous scheduler queued, from the id Airflow kept for it."""
        try:
            check_job_id(job_id)
        except ValueError:
            return False
        job = Job(job_id=job_id, ti_id=ti_id, queue=queue_name, rebuilt=True)
        if not self.jobs.adopt(job, ti_id, ti_key):
            return False
        self.relist = True  # its notices, left for its owner, are ours now
        self.wake.set()
        return True

    def outstanding(self) -> int:
        return self.jobs.outstanding()

    def queued_per_queue(self) -> dict[str, int]:
        return self.jobs.queued_per_queue()

    def reload_worker_keys(self) -> None:
        self.trust.reload()

    def flush_deletions(self) -> None:
        self.inbox.flush()

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        """While jobs are outstanding the marker is polled every ``poll_interval``, and after
        ``QUIET_POLLS`` polls in a row without a change (a job queued, an item listed, a relay
        call in flight) less and less often, down to five times that interval: long tasks
        call home only every few seconds, and each poll is a billed GET. Short tasks keep the
        fast rate, so a chain of them waits for nothing."""
        last_list = 0.0
        quiet = self.settings.poll_active
        unchanged = 0
        while not self.stopping.is_set():
            outstanding = self.outstanding()
            active, self.hurry = self.hurry, False
            try:
                changed = self.inbox.changed()
                now = time.monotonic()
                waiting = outstanding or self.inbox.waiting
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
            if time.monotonic() - self.last_check > self.settings.worker_check_interval:
                self.last_check = time.monotonic()
                try:
                    self.check_workers()
                except StoreError as exc:
                    log.warning("edge-mailbox: worker check postponed (%s)", exc)
                except Exception:
                    log.exception("edge-mailbox reconciler: worker check failed; continuing")
            self.inbox.flush()
            unchanged = 0 if active or self.replayer.busy else unchanged + 1
            if unchanged < QUIET_POLLS:
                quiet = self.settings.poll_active
            else:
                quiet = min(quiet * 1.5, self.settings.poll_active * 5)
            self.wake.wait(quiet if outstanding else self.settings.poll_idle)
            self.wake.clear()

    def poll_once(self) -> int:
        """Read the inbox's next pages and dispatch each item: claims here, each job's
        requests and result to a relay thread. Returns how many items were acted on."""
        items = self.inbox.read()
        self.relist |= self.inbox.more_pages
        results: dict[str, Item | None] = dict.fromkeys(self.reporter.adopted_results())
        requests: dict[str, list[Item]] = {}
        handled = 0
        for item in items:
            if self.inbox.still_parked(item):
                continue
            if item.kind == "claim":
                self.inbox.handle(item.key, "claim", self.reporter.on_claim, item.job_id, item)
                handled += 1
            elif item.kind == "result":
                results[item.job_id] = item
            else:
                known = self.jobs.get(item.job_id)
                if not (known and item.request_id in known.answered):  # answered since the LIST
                    requests.setdefault(item.job_id, []).append(item)
        for job_id in sorted(requests.keys() | results.keys()):
            pending = requests.get(job_id, [])
            result = results.get(job_id, NO_RESULT)
            if self.replayer.serve(job_id, pending, result):
                handled += len(pending) + (job_id in results)
        return handled

    def check_workers(self) -> None:
        """Fail the jobs of workers that stopped heartbeating, and jobs no worker can take;
        clean up; find claims whose notice never came."""
        self.trust.reload()
        if not self.watch.refresh():
            return
        metrics.gauge("live_workers", sum(self.watch.alive(w) for w in self.watch.last_seen))
        self.fleet.maybe_write()
        self.janitor.clean_up()
        self.janitor.sweep_queues()
        jobs = self.jobs.unfinished_owned()
        try:
            self.reporter.discover_claims(jobs, min_age=self.settings.worker_check_interval)
        except StoreError as exc:
            log.warning("edge-mailbox: cannot look for claims (%s)", exc)
        verdicts = self.watch.lost(jobs) + self.watch.unrunnable(
            jobs, min_age=self.settings.worker_check_interval
        )
        for job, reason in verdicts:
            self.reporter.fail(job, reason)
            if job.claim is None and job.manifest_key:
                with contextlib.suppress(StoreError):
                    self.mailbox.store.delete(job.manifest_key)

    def _keys_added(self) -> None:
        self.inbox.unpark_all()
        self.relist = True

    def _done(self, relist: bool) -> None:
        """A relay thread finished a job's batch."""
        self.relist |= relist
        self.wake.set()
