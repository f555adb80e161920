"""What the scheduler side knows of each job, and the one place where a job's state changes.

A job is one enqueue of a task instance (or of an executor callback). Its life is a phase:

    QUEUED --claim reported--> RUNNING --result--> SUCCEEDED | FAILED --cleanup--> CLEANED
       \\--revoked--> REVOKED        \\--worker lost / unrunnable--> FAILED

and, for a job rebuilt from a claim that Airflow does not run (a replayed manifest), STALE
from the start. Every change of phase is made by ``JobTable`` under its one lock and
returns whether it happened, so that a change reported to Airflow is reported once, whichever
thread saw it first (the reconciler's loop or a relay thread).

Ownership is apart from the phase: a job queued by this scheduler, or adopted from a dead
one, is ``owned`` and only then reported; another scheduler's job is known here only to
serve its relay calls.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edge_mailbox.executor.settings import ExecutorSettings
from edge_mailbox.mailbox.codec import Signed
from edge_mailbox.mailbox.models import Claim
from edge_mailbox.mailbox.recent import RecentSet

# A manifest's signature outlives its expiry by this leeway; a job's claim is kept (its
# tombstone) until then, so a replayed manifest meets it.
MANIFEST_LEEWAY = 60.0
REMEMBERED_QUEUES = 1_000


class Phase(enum.Enum):
    QUEUED = "queued"  # its manifest is written; no claim reported yet
    RUNNING = "running"  # its claim was reported to Airflow
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its result said so, its worker was lost, or no worker can run it
    REVOKED = "revoked"  # withdrawn by Airflow (queued too long)
    STALE = "stale"  # rebuilt from a claim of a try Airflow does not run: never reported
    CLEANED = "cleaned"  # its objects are deleted but its claim, kept as its tombstone

    @property
    def finished(self) -> bool:
        return self not in (Phase.QUEUED, Phase.RUNNING)


@dataclass
class Job:
    """One enqueue. Its phase is changed by JobTable only; the relay fields (token,
    answered, high_water) by the relay thread that holds ``lock``."""

    job_id: str
    ti_id: str
    queue: str
    manifest_key: str | None = None
    ti_key: Any = None
    token: str | None = None
    claim: Signed[Claim] | None = None
    pool_slots: int = 1
    enqueued_at: float = field(default_factory=time.time)
    phase: Phase = Phase.QUEUED
    finished_at: float | None = None
    owned: bool = True
    superseded: bool = False  # its task instance was queued again as a newer job
    rebuilt: bool = False  # known from the bucket (a restart, a peer's job), not from enqueue
    check_result: bool = False  # adopted: its result may be in the bucket already
    seen_at: float = field(default_factory=time.time)
    answered: set[str] = field(default_factory=set)  # its requests answered (a job's calls)
    # The highest request id handled: ids increase within a job and its requests are
    # replayed in id order, so a lower one is a replay of one handled before.
    high_water: str = ""
    callback_data: dict | None = None  # an executor callback's data, sealed to us
    connection_test: bool = False  # a connection test's: its own routes only, workload tokens
    lock: threading.Lock = field(default_factory=threading.Lock)  # one relay call at a time

    @property
    def finished(self) -> bool:
        return self.phase.finished

    @property
    def worker(self) -> str | None:
        return self.claim.model.worker if self.claim else None

    @property
    def claimed_at(self) -> float | None:
        return self.claim.model.claimed_at if self.claim else None


class JobTable:
    """Every job this scheduler knows, by id: the single owner of job -> task instance."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queues: RecentSet[str] = RecentSet(REMEMBERED_QUEUES)

    # -- membership --------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.job_id] = job
            self._queues.add(job.queue)

    def add_rebuilt(self, job: Job) -> Job:
        """A job rebuilt from the bucket, unless another thread rebuilt it first."""
        with self._lock:
            self._queues.add(job.queue)
            return self._jobs.setdefault(job.job_id, job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def __getitem__(self, job_id: str) -> Job:
        with self._lock:
            return self._jobs[job_id]

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._jobs

    def __iter__(self) -> Iterator[Job]:
        with self._lock:
            return iter(list(self._jobs.values()))

    def forget(self, job_ids: list[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)

    def queues(self) -> list[str]:
        with self._lock:
            return list(self._queues)

    # -- what Airflow hears ------------------------------------------------------------------

    def report_key(self, job_id: str) -> Any:
        """The task-instance key to report a job's events under, or None: another
        scheduler's job, or one superseded by a newer enqueue of its task instance."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.ti_key if job and job.owned and not job.superseded else None

    def live_jobs_of(self, ti_key: Any) -> list[Job]:
        """This scheduler's unfinished jobs of a task instance (superseded ones excluded)."""
        with self._lock:
            return [
                j
                for j in self._jobs.values()
                if j.ti_key == ti_key and j.owned and not j.superseded and not j.finished
            ]

    # -- phase changes: each returns whether it happened -------------------------------------

    def mark_running(self, job: Job) -> bool:
        with self._lock:
            if job.phase is not Phase.QUEUED or not job.owned:
                return False
            job.phase = Phase.RUNNING
            return True

    def finish(self, job: Job, phase: Phase) -> bool:
        assert phase.finished and phase is not Phase.CLEANED
        with self._lock:
            if job.finished:
                return False
            job.phase = phase
            job.finished_at = time.time()
            return True

    def mark_cleaned(self, job: Job) -> None:
        with self._lock:
            job.phase = Phase.CLEANED

    def supersede(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job:
                job.superseded = True

    def adopt(self, job: Job, ti_id: str, ti_key: Any) -> bool:
        """Make a job (known or just rebuilt) this scheduler's to report."""
        with self._lock:
            job = self._jobs.setdefault(job.job_id, job)
            if job.ti_id != ti_id or job.phase in (Phase.STALE, Phase.REVOKED, Phase.CLEANED):
                return False
            job.ti_key = ti_key
            job.owned = job.check_result = True
            if job.finished:  # known before only for its relay: its result is ours to report
                job.phase = Phase.RUNNING if job.claim else Phase.QUEUED
                job.finished_at = None
            return True

    # -- questions ---------------------------------------------------------------------------

    def outstanding(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.owned and not j.finished)

    def unfinished_owned(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.owned and not j.finished]

    def take_adopted(self) -> list[Job]:
        """Adopted jobs not yet looked for a result (each is returned once)."""
        with self._lock:
            adopted = [j for j in self._jobs.values() if j.check_result]
            for job in adopted:
                job.check_result = False
            return adopted

    def queued_per_queue(self) -> dict[str, int]:
        """Jobs written and not claimed yet, per queue (for the queued_jobs gauge)."""
        counts: dict[str, int] = {}
        with self._lock:
            for job in self._jobs.values():
                if not job.finished and job.claim is None:
                    counts[job.queue] = counts.get(job.queue, 0) + 1
        return counts

    def manifest_keys(self) -> set[str]:
        with self._lock:
            return {j.manifest_key for j in self._jobs.values() if j.manifest_key}

    def cleanup_due(self, settings: ExecutorSettings, now: float) -> tuple[list[Job], list[Job]]:
        """(jobs whose objects are due for deletion, cleaned jobs whose manifest expired:
        their claims go, and they are forgotten). Another scheduler's jobs not heard of for
        ``inbox_item_timeout`` are forgotten here: their owner cleans them up."""
        with self._lock:
            peers = [j for j in self._jobs.values() if not j.owned and j.phase is not Phase.STALE]
            for job in peers:
                if now - job.seen_at > settings.inbox_item_timeout:
                    del self._jobs[job.job_id]
            due = [j for j in self._jobs.values() if _objects_due(j, settings, now)]
            gone = [
                j
                for j in self._jobs.values()
                if j.phase is Phase.CLEANED
                and now > j.enqueued_at + settings.manifest_ttl + MANIFEST_LEEWAY
            ]
        return due, gone


def _objects_due(job: Job, settings: ExecutorSettings, now: float) -> bool:
    if job.phase is Phase.STALE:  # never ours to report: its objects go after the failure delay
        return now - (job.finished_at or now) > settings.cleanup_failed_after
    if not (job.owned and job.finished and job.finished_at) or job.phase is Phase.CLEANED:
        return False
    after = (
        settings.cleanup_success_after
        if job.phase is Phase.SUCCEEDED
        else settings.cleanup_failed_after
    )
    return now - job.finished_at > after
