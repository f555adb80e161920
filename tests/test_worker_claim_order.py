"""Which job a worker takes first: the highest priority, then the oldest; and many workers on
one queue start at different jobs of the top priority (the in-memory store: no race here)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import JobManifest, MaintenanceSource
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.storage import Store
from edge_mailbox.signer import KeyRing, SealKey, SigningKey
from edge_mailbox.worker.settings import WorkerSettings
from edge_mailbox.worker.worker import Worker

SCHEDULER = SigningKey.generate()


def manifest(queue: str, priority: int, enqueued_at: float, version: str = "0.1.0") -> JobManifest:
    job_id = new_id(enqueued_at)
    return JobManifest(
        job_id=job_id,
        queue=queue,
        enqueued_at=enqueued_at,
        ti={"id": "01a20147-3ff0-76e2-ac44-bf7425a784de", "dag_id": "d", "task_id": job_id},
        dag_rel_path="d.py",
        bundle_info={"name": "dags-folder", "version": None},
        pool_slots=1,
        priority=priority,
        seal_key=SealKey.generate().public,
        scheduler_version=version,
    )


def worker(store: Store, name: str, tmp_path: Path) -> Worker:
    settings = WorkerSettings(
        store=store.config,
        name=name,
        queues=("q",),
        concurrency=4,
        key=SigningKey.generate(),
        scheduler_keys=KeyRing([SCHEDULER.public]),
    )
    return Worker(settings, tmp_path, store=store)


def test_highest_priority_first_then_oldest(mem_store, tmp_path) -> None:
    mailbox = Mailbox(mem_store)
    now = time.time()
    jobs = {
        "low-old": manifest("q", 1, now - 100),
        "high-new": manifest("q", 50, now - 10),
        "high-old": manifest("q", 50, now - 50),
        "mid": manifest("q", 10, now - 200),
    }
    for m in jobs.values():
        mailbox.put_manifest(m, SCHEDULER, ttl=600)
    order = [job for _, job in worker(mem_store, "w", tmp_path).finder.candidates("q")[0]]
    by_id = {m.job_id: name for name, m in jobs.items()}
    assert [by_id[j] for j in order][2:] == ["mid", "low-old"]
    assert {by_id[j] for j in order[:2]} == {"high-new", "high-old"}  # the top priority first


def test_workers_start_at_different_jobs_of_the_top_priority(mem_store, tmp_path) -> None:
    mailbox = Mailbox(mem_store)
    now = time.time()
    for i in range(8):
        mailbox.put_manifest(manifest("q", 5, now - i), SCHEDULER, ttl=600)
    firsts = {
        worker(mem_store, f"plant-{n}", tmp_path).finder.candidates("q")[0][0][1] for n in range(8)
    }
    assert len(firsts) > 1  # contention is spread: not everyone races for the same key


def test_major_version_mismatch_stops_claiming(mem_store, tmp_path) -> None:
    mailbox = Mailbox(mem_store)
    future = manifest("q", 5, time.time(), version="9.0.0")
    mailbox.put_manifest(future, SCHEDULER, ttl=600)
    w = worker(mem_store, "w", tmp_path)
    assert w.finder.scan("q") is False
    assert not w.accepting and "version mismatch" in w.refusal and "9.0.0" in w.refusal
    assert w.state.value == "maintenance"
    with pytest.raises(Exception, match="no such key"):
        mem_store.get(mailbox.layout.claim(future.job_id))


def test_a_busy_worker_backs_off_its_polls_and_wakes_when_a_job_ends(mem_store, tmp_path) -> None:
    """While a long job runs and nothing new comes, the queue polls back off to poll_max (as
    an idle worker's do); the loop still wakes the moment the job ends."""
    from edge_mailbox.worker.runners import RunnerPool
    from edge_mailbox.worker.worker import RunningJob

    w = worker(mem_store, "busy", tmp_path)
    w.settings = dataclasses.replace(w.settings, poll_min=0.02, poll_max=1.0)
    w.poll_grace = 0.0
    w.runners = RunnerPool(lambda spec: time.sleep(spec["sleep"]) or 0)
    job = manifest("q", 1, time.time())
    started = time.time()
    handle = w.runners.start({"sleep": 5})
    w.running[job.job_id] = RunningJob(job, handle, started, tmp_path / "stats.json")
    try:
        while job.job_id in w.running:
            w._loop_once()
            assert time.time() - started < 30, "the job was not reaped"
        gets = w.mailbox.store.counter.snapshot()["GET"]
    finally:
        w.runners.close()
    result = Mailbox(mem_store).read_result(
        job.job_id, w.settings.key.kid, KeyRing([w.settings.key.public])
    )
    assert 5 <= result.model.finished_at - started < 5.5  # reaped as it ended
    # Backing off from 0.02 s to 1 s: about 12 marker polls in 5 s (a fixed 0.2 s: 25)
    assert gets <= 16, gets


@pytest.mark.parametrize("why", ["no free slot", "maintenance"])
def test_a_worker_that_cannot_take_jobs_does_not_spin(mem_store, tmp_path, why) -> None:
    """All slots taken, or in maintenance: no queue polls (only the all-queues marker, for
    its command, at the idle pace), and the loop still sleeps (a turn a second at most, and
    at once when the job ends) instead of spinning."""
    from edge_mailbox.worker.runners import RunnerPool
    from edge_mailbox.worker.worker import RunningJob

    w = worker(mem_store, "full", tmp_path)
    if why == "maintenance":
        w.orders.set_maintenance(MaintenanceSource.LOCAL, True, "test")
    w.runners = RunnerPool(lambda spec: time.sleep(spec["sleep"]) or 0)
    job = manifest("q", 1, time.time()).model_copy(update={"pool_slots": 4})
    handle = w.runners.start({"sleep": 3})
    w.running[job.job_id] = RunningJob(job, handle, time.time(), tmp_path / "stats.json")
    turns, started = 0, time.monotonic()
    try:
        while job.job_id in w.running:
            polls_while_running = w.mailbox.store.counter.snapshot()
            w._loop_once()
            turns += 1
            assert time.monotonic() - started < 30, "the job was not reaped"
    finally:
        w.runners.close()
    assert turns <= 8, turns  # about one a second; a spinning loop: thousands
    # The marker and the command once (the idle pace is 6 s); the turn that reaps the job
    # polls the queues: a slot is free.
    assert polls_while_running["LIST"] == 0
    assert polls_while_running["GET"] == 2
