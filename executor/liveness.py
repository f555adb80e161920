"""Which workers are alive, and which jobs can never run: the reconciler's slow loop.

Liveness comes from one LIST of the heartbeat folder (LastModified, no GET per worker). A
job whose claiming worker has not been heard of for ``worker_timeout`` is failed, so Airflow
retries it per its ``retries``; a job whose worker is alive is never failed here. After the
bucket itself was unreachable (or the scheduler restarted) nobody is declared dead until the
bucket has been reachable again for a whole ``worker_timeout``: an outage is not a death.

A queued job that needs more ``pool_slots`` than any live worker of its queue has is failed
with that reason, instead of waiting silently forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.models import Heartbeat, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, VerificationError

log = logging.getLogger(__name__)
SLOW_LIST_SECONDS = 5.0


class WatchedJob(Protocol):
    job_id: str
    queue: str
    pool_slots: int
    enqueued_at: float
    finished: bool

    @property
    def worker(self) -> str | None: ...

    @property
    def claimed_at(self) -> float | None: ...


@dataclass
class WorkerWatch:
    mailbox: Mailbox
    worker_keys: KeyRing
    timeout: float
    healthy_since: float | None = None
    last_seen: dict[str, float] = field(default_factory=dict)
    check_interval: float = 15.0
    last_refresh: float | None = None
    etags: dict[str, str] = field(default_factory=dict)
    heartbeats: dict[str, tuple[str, Heartbeat]] = field(default_factory=dict)  # by etag
    warned: set[str] = field(default_factory=set)

    def refresh(self) -> bool:
        """One LIST of the heartbeat folder. False when the bucket did not answer."""
        started = time.time()
        try:
            entries = self.mailbox.list_heartbeats()
        except StoreError as exc:
            log.warning("edge-mailbox: cannot read worker heartbeats (%s)", exc)
            self.healthy_since = None
            return False
        now = time.time()
        gap = started - self.last_refresh if self.last_refresh else 0.0
        self.last_refresh = now
        if now - started > SLOW_LIST_SECONDS or gap > 2 * self.check_interval + SLOW_LIST_SECONDS:
            # The bucket hung rather than failed (this LIST, or another call that held up our
            # loop): writers were stuck as long as we were, so their heartbeats are stale for
            # the same reason. Start the clock again.
            log.warning(
                "edge-mailbox: the bucket was slow (LIST %.0f s, %.0f s since the last check)",
                now - started,
                gap,
            )
            self.healthy_since = now
        if self.healthy_since is None:
            self.healthy_since = now
        self.last_seen, self.etags = {}, {}
        for entry in entries:
            try:
                name = self.mailbox.layout.parse_heartbeat(entry.key)
            except ValueError:
                continue
            if name:
                self.last_seen[name] = entry.last_modified.timestamp()
                self.etags[name] = entry.etag
        return True

    def alive(self, worker: str, since: float = 0.0) -> bool:
        seen = max(self.last_seen.get(worker, 0.0), since)
        return time.time() - seen <= self.timeout

    def can_judge(self) -> bool:
        return self.healthy_since is not None and time.time() - self.healthy_since > self.timeout

    def lost(self, jobs: Iterable[WatchedJob]) -> list[tuple[WatchedJob, str]]:
        """Claimed, unfinished jobs whose worker stopped heartbeating."""
        if not self.can_judge():
            return []
        dead = []
        for job in jobs:
            if job.finished or job.worker is None:
                continue
            if not self.alive(job.worker, job.claimed_at or 0.0):
                seen = self.last_seen.get(job.worker)
                when = time.strftime("%H:%M:%S", time.localtime(seen)) if seen else "never"
                dead.append(
                    (
                        job,
                        f"edge worker {job.worker!r} stopped heartbeating (last heard: {when}; "
                        f"timeout {self.timeout:.0f} s)",
                    )
                )
        return dead

    def _heartbeat(self, worker: str) -> Heartbeat | None:
        etag = self.etags.get(worker)
        cached = self.heartbeats.get(worker)
        if cached and cached[0] == etag:
            return cached[1]
        try:
            signed = self.mailbox.read_heartbeat(worker, self.worker_keys)
        except (NotFound, VerificationError, ProtocolError, StoreError) as exc:
            log.debug("edge-mailbox: heartbeat of %s unreadable: %s", worker, exc)
            return None
        if etag:
            self.heartbeats[worker] = (etag, signed.model)
        return signed.model

    def unrunnable(
        self, jobs: Iterable[WatchedJob], min_age: float
    ) -> list[tuple[WatchedJob, str]]:
        """Queued jobs needing more slots than every live worker of their queue has."""
        waiting = [
            j
            for j in jobs
            if not j.finished
            and j.worker is None
            and j.pool_slots > 1
            and time.time() - j.enqueued_at > min_age
        ]
        if not waiting or not self.can_judge():
            return []
        capacity: dict[str, list[tuple[str, int]]] = {}
        for worker in self.last_seen:
            if not self.alive(worker):
                continue
            heartbeat = self._heartbeat(worker)
            if heartbeat is None or heartbeat.state is WorkerState.OFFLINE:
                continue
            for queue in heartbeat.queues:
                capacity.setdefault(queue, []).append((worker, heartbeat.concurrency))
        verdicts = []
        for job in waiting:
            workers = capacity.get(job.queue)
            if not workers:
                if job.job_id not in self.warned:
                    log.warning(
                        "edge-mailbox: no live worker serves queue %r (job %s)",
                        job.queue,
                        job.job_id,
                    )
                    self.warned.add(job.job_id)
                continue
            largest = max(c for _, c in workers)
            if job.pool_slots > largest:
                verdicts.append(
                    (
                        job,
                        f"the task needs pool_slots={job.pool_slots}, but the live edge workers of "
                        f"queue {job.queue!r} have at most {largest} slots "
                        f"({', '.join(f'{w}: {c}' for w, c in sorted(workers))})",
                    )
                )
        return verdicts
