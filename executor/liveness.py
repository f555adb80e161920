"""Which workers are alive, and which jobs can never run: the reconciler's slow loop.

Liveness comes from one LIST of the heartbeat folder, and a GET of each heartbeat that
changed since the last look (its ETag): a heartbeat counts only once it verified, signed by
a trusted worker key, bound to the name in its key and naming that worker in its body, and
newer (``sent_at``) than the last one that key signed for that name, so an old heartbeat
written back does not count either. Its LastModified when first seen is the worker's clock.
Anything else is logged once and ignored: anyone who can write to the bucket can write an
object at ``workers/{W}.jws``.

A job whose claim holder's key has not heartbeated for its worker for ``worker_timeout`` is
failed, so Airflow retries it per its ``retries``; a heartbeat signed by another key, even a
trusted one, keeps nobody else's jobs alive. After the bucket itself was unreachable (or the
scheduler restarted) nobody is declared dead until the bucket has been reachable again for a
whole ``worker_timeout``: an outage is not a death.

A queued job that needs more ``pool_slots`` than any live worker of its queue has is failed
with that reason, instead of waiting silently forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from edge_mailbox.mailbox.codec import Signed
from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.models import Claim, Heartbeat, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.store import Entry
from edge_mailbox.signer import KeyRing, VerificationError

log = logging.getLogger(__name__)
SLOW_LIST_SECONDS = 5.0


class WatchedJob(Protocol):
    job_id: str
    queue: str
    pool_slots: int
    enqueued_at: float
    finished: bool
    claim: Signed[Claim] | None

    @property
    def worker(self) -> str | None: ...

    @property
    def claimed_at(self) -> float | None: ...


@dataclass(frozen=True)
class Beat:
    """The newest verified heartbeat one key signed for one worker name."""

    etag: str
    sent_at: float
    seen: float  # LastModified of the object when this heartbeat was first found there
    heartbeat: Heartbeat


@dataclass
class WorkerWatch:
    mailbox: Mailbox
    worker_keys: KeyRing
    timeout: float
    healthy_since: float | None = None
    last_seen: dict[str, float] = field(default_factory=dict)  # name -> newest verified beat
    check_interval: float = 15.0
    last_refresh: float | None = None
    # name -> kid -> its newest verified beat; only names whose heartbeat object is listed
    beats: dict[str, dict[str, Beat]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # name -> ETag refused (logged)
    warned: set[str] = field(default_factory=set)  # queued jobs warned of; only waiting ones

    def refresh(self) -> bool:
        """One LIST of the heartbeat folder, and a GET of each changed heartbeat. False when
        the bucket did not answer (nobody's clock moves then)."""
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
        listed: dict[str, Entry] = {}
        for entry in entries:
            try:
                name = self.mailbox.layout.parse_heartbeat(entry.key)
            except ValueError:
                continue
            if name:
                listed[name] = entry
        for gone in (self.beats.keys() | self.refused.keys()) - listed.keys():
            self.beats.pop(gone, None)  # its heartbeat object is gone: so is what we knew
            self.refused.pop(gone, None)
        try:
            for name, entry in listed.items():
                self._look_at(name, entry)
        except StoreError as exc:
            log.warning("edge-mailbox: cannot read worker heartbeats (%s)", exc)
            self.healthy_since = None
            return False
        if self.healthy_since is None:
            self.healthy_since = now
        self.last_seen = {
            name: max(b.seen for b in by_kid.values())
            for name, by_kid in self.beats.items()
            if by_kid
        }
        return True

    def _look_at(self, name: str, entry: Entry) -> None:
        """Verify the heartbeat at ``name``'s key, unless its ETag was judged already."""
        by_kid = self.beats.get(name, {})
        for kid in [k for k in by_kid if k not in self.worker_keys]:
            del by_kid[kid]  # a key no longer trusted keeps nothing alive
        if self.refused.get(name) == entry.etag or any(
            b.etag == entry.etag for b in by_kid.values()
        ):
            return  # the same object as before: written back, or unchanged; its clock stays
        try:
            obj = self.mailbox.store.get(entry.key, max_bytes=Heartbeat.MAX_BYTES * 2)
            signed = self.mailbox.verify_heartbeat(obj.body, name, self.worker_keys)
        except NotFound:
            return  # deleted since the LIST
        except (VerificationError, ProtocolError) as exc:
            self._refuse(name, entry.etag, f"{exc}")
            return
        newest = by_kid.get(signed.kid)
        sent_at = signed.model.sent_at
        if newest and sent_at < newest.sent_at:
            self._refuse(name, obj.etag, f"older than the last heartbeat of key {signed.kid}")
            return
        if newest and sent_at == newest.sent_at:  # the same heartbeat, found again
            by_kid[signed.kid] = Beat(obj.etag, sent_at, newest.seen, signed.model)
            return
        self.refused.pop(name, None)
        seen = (obj.last_modified or entry.last_modified).timestamp()
        self.beats.setdefault(name, {})[signed.kid] = Beat(obj.etag, sent_at, seen, signed.model)

    def _refuse(self, name: str, etag: str, reason: str) -> None:
        self.refused[name] = etag
        log.warning("edge-mailbox: ignoring the heartbeat of worker %r: %s", name, reason)

    def alive(self, worker: str, since: float = 0.0, kid: str | None = None) -> bool:
        """Heard of within ``timeout``: by a heartbeat ``kid`` signed, or (None) any key's."""
        seen = self._seen(worker, kid)
        return time.time() - max(seen or 0.0, since) <= self.timeout

    def _seen(self, worker: str, kid: str | None) -> float | None:
        if kid is None:
            return self.last_seen.get(worker)
        beat = self.beats.get(worker, {}).get(kid)
        return beat.seen if beat else None

    def can_judge(self) -> bool:
        return self.healthy_since is not None and time.time() - self.healthy_since > self.timeout

    def lost(self, jobs: Iterable[WatchedJob]) -> list[tuple[WatchedJob, str]]:
        """Claimed, unfinished jobs whose claim holder stopped heartbeating for its worker."""
        if not self.can_judge():
            return []
        dead = []
        for job in jobs:
            if job.finished or job.worker is None or job.claim is None:
                continue
            kid = job.claim.kid
            if not self.alive(job.worker, job.claimed_at or 0.0, kid):
                seen = self._seen(job.worker, kid)
                when = time.strftime("%H:%M:%S", time.localtime(seen)) if seen else "never"
                dead.append(
                    (
                        job,
                        f"edge worker {job.worker!r} stopped heartbeating (last heard: {when}, "
                        f"from its key {kid}; timeout {self.timeout:.0f} s)",
                    )
                )
        return dead

    def _heartbeat(self, worker: str) -> Heartbeat | None:
        """The newest verified heartbeat of ``worker``, whichever trusted key signed it."""
        by_kid = self.beats.get(worker)
        if not by_kid:
            return None
        return max(by_kid.values(), key=lambda b: b.seen).heartbeat

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
        self.warned &= {j.job_id for j in waiting}  # warned once while it waits, no longer
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
