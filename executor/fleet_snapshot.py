"""What this reconciler knows of the fleet, written for the dashboard: ``fleet/{owner}.jws``.

The dashboard (on the api-server) must not GET every worker's heartbeat to draw a page, nor
believe what anyone who can write to the bucket put there. So each reconciler writes, every
``fleet_snapshot_interval``, one signed FleetSnapshot from what it already holds — the
heartbeats its WorkerWatch verified, its own jobs from the JobTable, its queues, its bucket
requests — at the cost of one PUT and no read. Once an hour it also deletes the snapshots of
other owners not rewritten for an hour (one LIST of ``fleet/``): a scheduler that died
leaves its snapshot behind, and nobody else would remove it.

Nothing here may stop the reconciler: a bucket error is logged and the write tried again at
the next interval.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_mailbox.executor.jobs import Job, JobTable, Phase
from edge_mailbox.executor.liveness import WorkerWatch
from edge_mailbox.mailbox.codec import TooLarge
from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.layout import encode_name
from edge_mailbox.mailbox.models import (
    FleetJob,
    FleetQueue,
    FleetSnapshot,
    FleetWorker,
    WorkerState,
)
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import SigningKey

log = logging.getLogger(__name__)

MAX_WORKERS = 5000
MAX_JOBS = 2000
MAX_QUEUES = 1000
FINISHED_SHOWN_FOR = 3600.0  # finished jobs of the last hour
CLEANUP_INTERVAL = 3600.0
STALE_AFTER = 3600.0  # another owner's snapshot not rewritten for this long is removed
# The task-instance fields a FleetJob names, as Airflow's TaskInstanceKey has them.
TI_FIELDS = ("dag_id", "run_id", "task_id", "map_index", "try_number")


def process_owner() -> str:
    """This scheduler process, as ``host:pid``: stable while it runs, distinct between the
    schedulers of a fleet. A long host name is shortened: escaped, the owner must not need
    the hash that stands for a long name in a key, which cannot be read back."""
    host, pid = (socket.gethostname() or "scheduler")[:200], os.getpid()
    while "~" in encode_name(f"{host}:{pid}", kind="scheduler", limit=256):
        host = host[:-1]
    return f"{host}:{pid}"


@dataclass
class SnapshotWriter:
    mailbox: Mailbox
    signing_key: SigningKey
    jobs: JobTable
    watch: WorkerWatch
    interval: float  # 0: never written
    worker_timeout: float
    owner: str = field(default_factory=process_owner)
    clock: Callable[[], float] = time.time
    started_at: float = 0.0
    last_write: float | None = None
    last_cleanup: float | None = None
    # Finished jobs' outcomes as last seen: cleanup turns their phase into CLEANED, and the
    # page should still say that they succeeded. Only jobs still in the table are kept.
    outcomes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started_at = self.started_at or self.clock()

    def maybe_write(self) -> None:
        """Write the snapshot if ``interval`` has passed since the last attempt, and clean up
        if an hour has passed since the last cleanup. Never raises."""
        now = self.clock()
        if self.interval <= 0 or not _due(self.last_write, now, self.interval):
            return
        self.last_write = now
        try:
            self.write(now)
            if _due(self.last_cleanup, now, CLEANUP_INTERVAL):
                self.remove_stale(now)
                self.last_cleanup = now
        except StoreError as exc:
            log.warning(
                "edge-mailbox: fleet snapshot not written (%s); next in %.0f s", exc, self.interval
            )
        except Exception:
            log.exception("edge-mailbox: fleet snapshot not written; next in %.0f s", self.interval)

    def write(self, now: float) -> FleetSnapshot:
        """One PUT of the snapshot, shrunk to fit its size limit if it must be (_shrink)."""
        workers = self.workers(now)
        jobs = self.job_rows(now)
        queues = self.queues()
        requests = self.mailbox.store.counter.snapshot()
        while True:
            snapshot = FleetSnapshot(
                owner=self.owner,
                written_at=now,
                started_at=self.started_at,
                workers=workers,
                jobs=jobs,
                queues=queues,
                requests=requests,
            )
            try:
                self.mailbox.put_fleet_snapshot(snapshot, self.signing_key)
                return snapshot
            except TooLarge as exc:
                if not jobs and not workers:
                    raise
                workers, jobs = _shrink(workers, jobs, exc.size - exc.limit)
                log.warning(
                    "edge-mailbox: fleet snapshot over its size limit (%d bytes); it shows "
                    "%d workers and %d jobs",
                    exc.size,
                    len(workers),
                    len(jobs),
                )

    def workers(self, now: float) -> list[FleetWorker]:
        """The newest verified heartbeat of each worker, whichever trusted key signed it,
        the most recently heard first."""
        rows = []
        for by_kid in self.watch.beats.values():
            if not by_kid:
                continue
            kid, beat = max(by_kid.items(), key=lambda item: item[1].seen)
            alive = (
                now - beat.seen <= self.worker_timeout
                and beat.heartbeat.state is not WorkerState.OFFLINE
            )
            rows.append(FleetWorker(heartbeat=beat.heartbeat, kid=kid, seen=beat.seen, alive=alive))
        rows.sort(key=lambda w: w.seen, reverse=True)
        return rows[:MAX_WORKERS]

    def job_rows(self, now: float) -> list[FleetJob]:
        """This scheduler's queued and running jobs, then those finished within the last
        hour (the newest first), at most MAX_JOBS; the newest enqueued first."""
        owned = [j for j in self.jobs if j.owned and j.phase is not Phase.STALE]
        self._remember_outcomes(owned)
        unfinished = [j for j in owned if not j.finished]
        finished = [
            j for j in owned if j.finished and now - (j.finished_at or 0.0) <= FINISHED_SHOWN_FOR
        ]
        unfinished.sort(key=lambda j: j.enqueued_at, reverse=True)
        finished.sort(key=lambda j: j.finished_at or 0.0, reverse=True)
        chosen = (unfinished + finished)[:MAX_JOBS]
        chosen.sort(key=lambda j: j.enqueued_at, reverse=True)
        return [self._row(j) for j in chosen]

    def queues(self) -> list[FleetQueue]:
        """Every queue this scheduler knows, with its jobs not claimed yet and the oldest."""
        oldest: dict[str, list[float]] = {name: [] for name in self.jobs.queues()}
        for job in self.jobs:
            if job.owned and job.phase is Phase.QUEUED and job.claim is None:
                oldest.setdefault(job.queue, []).append(job.enqueued_at)
        rows = [
            FleetQueue(queue=name, pending=len(times), oldest_enqueued_at=min(times, default=None))
            for name, times in oldest.items()
        ]
        rows.sort(key=lambda q: (-q.pending, q.queue))
        return rows[:MAX_QUEUES]

    def remove_stale(self, now: float) -> list[str]:
        """Delete other owners' snapshots not rewritten for an hour: one LIST, one batch."""
        own = self.mailbox.layout.fleet_snapshot(self.owner)
        stale = [
            e.key
            for e in self.mailbox.list_fleet_snapshots()
            if e.key != own and now - e.last_modified.timestamp() > STALE_AFTER
        ]
        if not stale:
            return []
        failed = self.mailbox.store.delete_many(stale)
        if failed:
            raise StoreError(f"could not delete {len(failed)} stale fleet snapshots")
        log.info("edge-mailbox: removed %d stale fleet snapshots: %s", len(stale), stale)
        return stale

    def _remember_outcomes(self, owned: list[Job]) -> None:
        known = {j.job_id for j in owned}
        self.outcomes = {k: v for k, v in self.outcomes.items() if k in known}
        for job in owned:
            if job.finished and job.phase is not Phase.CLEANED:
                self.outcomes[job.job_id] = job.phase.value

    def _row(self, job: Job) -> FleetJob:
        phase = job.phase.value
        if job.phase is Phase.CLEANED:
            phase = self.outcomes.get(job.job_id, phase)
        return FleetJob(
            job_id=job.job_id,
            queue=job.queue,
            phase=phase,
            ti=_ti_of(job),
            worker=job.worker,
            enqueued_at=job.enqueued_at,
            claimed_at=job.claimed_at,
            finished_at=job.finished_at,
        )


def _due(last: float | None, now: float, interval: float) -> bool:
    """Whether ``interval`` passed since ``last`` (a clock set back counts as passed)."""
    return last is None or not 0 <= now - last < interval


def _ti_of(job: Job) -> dict[str, str | int]:
    """dag_id, run_id, task_id, map_index and try_number of the job's task instance, from
    the key Airflow knows it by (a callback's key has none of them)."""
    values = {name: getattr(job.ti_key, name, None) for name in TI_FIELDS}
    return {k: v for k, v in values.items() if isinstance(v, str | int)}


def _shrink(
    workers: list[FleetWorker], jobs: list[FleetJob], excess: int
) -> tuple[list[FleetWorker], list[FleetJob]]:
    """Drop rows worth at least ``excess`` signed bytes (a row's JSON grows by a third in
    the envelope's base64), in this order: finished jobs, those finished longest ago first;
    workers heard of longest ago (the dashboard still sees them in its LIST of heartbeats);
    unfinished jobs, those enqueued longest ago first (nothing else shows them)."""
    budget = excess * 1.05 + 64
    finished = sorted((j for j in jobs if j.finished_at is not None), key=lambda j: j.finished_at)
    unfinished = sorted((j for j in jobs if j.finished_at is None), key=lambda j: j.enqueued_at)
    dropped: set[str] = set()
    for job in finished:
        if budget <= 0:
            break
        dropped.add(job.job_id)
        budget -= _signed_size(job)
    kept = len(workers)  # the most recently heard first: drop from the end
    while budget > 0 and kept:
        kept -= 1
        budget -= _signed_size(workers[kept])
    for job in unfinished:
        if budget <= 0:
            break
        dropped.add(job.job_id)
        budget -= _signed_size(job)
    return workers[:kept], [j for j in jobs if j.job_id not in dropped]


def _signed_size(row: FleetJob | FleetWorker) -> float:
    return len(row.model_dump_json()) * 4 / 3
