"""The fleet view the dashboard draws (executor/fleet_view.py), on the in-memory store: one
LIST per 1,000 heartbeats and no GET per worker; states read with the LIST's liveness clock;
only what a scheduler's key signed is believed; queues, jobs and costs merged over the
schedulers' snapshots."""

from __future__ import annotations

import time

import pytest
from fleetkit import beat, heartbeat, job, snapshot

from edge_mailbox.executor.fleet_view import (
    DRAINING,
    IDLE,
    MAINTENANCE,
    MAINTENANCE_REQUESTED,
    OFFLINE,
    RUNNING,
    SHUTTING_DOWN,
    UNKNOWN,
    SnapshotCache,
    filter_jobs,
    filter_workers,
    read_fleet,
    task_ref,
)
from edge_mailbox.mailbox.memstore import MemoryStore
from edge_mailbox.mailbox.models import FleetQueue, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, SigningKey

TIMEOUT = 120.0
STALE = 120.0


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mailbox(mem_store: MemoryStore, clock: Clock) -> Mailbox:
    mem_store.clock = clock
    return Mailbox(mem_store)


SCHEDULER = SigningKey.generate()
WORKER = SigningKey.generate()
KEYS = KeyRing([SCHEDULER.public])


def read(mailbox: Mailbox, clock: Clock, **kw):
    return read_fleet(mailbox, KEYS, TIMEOUT, STALE, now=clock.now, **kw)


def test_states_from_the_snapshot_and_the_lists_clock(mailbox: Mailbox, clock: Clock) -> None:
    rows = {
        "busy": dict(state=WorkerState.RUNNING, running_jobs=[job().job_id], free_slots=3),
        "quiet": dict(state=WorkerState.IDLE),
        "asked": dict(state=WorkerState.MAINTENANCE_PENDING, running_jobs=[job().job_id]),
        "held": dict(state=WorkerState.MAINTENANCE),
        "draining": dict(state=WorkerState.STOPPING, running_jobs=[job().job_id]),
        "stopping": dict(state=WorkerState.STOPPING),
        "gone": dict(state=WorkerState.OFFLINE),
    }
    beats = [(beat(mailbox, WORKER, name, **fields), WORKER) for name, fields in rows.items()]
    beat(mailbox, WORKER, "unseen")  # listed, in no snapshot
    snapshot(mailbox, SCHEDULER, "sched-a", workers=beats, written_at=clock.now)
    states = {w.name: w.state for w in read(mailbox, clock).workers}
    assert states == {
        "busy": RUNNING,
        "quiet": IDLE,
        "asked": MAINTENANCE_REQUESTED,
        "held": MAINTENANCE,
        "draining": DRAINING,
        "stopping": SHUTTING_DOWN,
        "gone": OFFLINE,
        "unseen": UNKNOWN,
    }
    clock.now += TIMEOUT + 1  # no heartbeat object rewritten since: all are offline
    assert {w.state for w in read(mailbox, clock).workers} == {OFFLINE}


def test_a_page_per_thousand_workers_and_no_get_per_worker(mailbox: Mailbox, clock: Clock) -> None:
    beats = [(beat(mailbox, WORKER, f"w{i:04d}"), WORKER) for i in range(2500)]
    snapshot(mailbox, SCHEDULER, "sched-a", workers=beats[:2000], written_at=clock.now)
    cache = SnapshotCache()
    fleet = read(mailbox, clock, cache=cache)
    assert len(fleet.workers) == 2500
    assert fleet.requests == {"LIST": 3 + 1, "GET": 1}  # 3 pages of heartbeats, fleet/, one GET
    again = read(mailbox, clock, cache=cache)
    assert again.requests == {"LIST": 4}  # the snapshot is unchanged: not read again
    assert sum(w.state == UNKNOWN for w in again.workers) == 500


def test_a_snapshot_not_signed_by_the_scheduler_is_not_believed(
    mailbox: Mailbox, clock: Clock
) -> None:
    hb = beat(mailbox, WORKER, "w1", state=WorkerState.RUNNING)
    snapshot(mailbox, WORKER, "forger", workers=[(hb, WORKER)], written_at=clock.now)
    fleet = read(mailbox, clock)
    assert [w.state for w in fleet.workers] == [UNKNOWN]
    assert fleet.snapshots == []
    assert "fleet snapshot" in fleet.problems[0] and "not believed" in fleet.problems[0]


def test_the_newest_heartbeat_of_any_snapshot_wins(mailbox: Mailbox, clock: Clock) -> None:
    old = heartbeat("w1", state=WorkerState.IDLE, sent_at=clock.now - 20)
    new = beat(mailbox, WORKER, "w1", state=WorkerState.MAINTENANCE, sent_at=clock.now - 5)
    snapshot(mailbox, SCHEDULER, "a", workers=[(new, WORKER)], written_at=clock.now)
    snapshot(mailbox, SCHEDULER, "b", workers=[(old, WORKER)], written_at=clock.now)
    (worker,) = read(mailbox, clock).workers
    assert (worker.state, worker.reported_by) == (MAINTENANCE, "a")


def test_queues_jobs_and_links_across_schedulers(mailbox: Mailbox, clock: Clock) -> None:
    mapped = job(
        "gpu",
        "w1",
        ti={"dag_id": "d x", "run_id": "r/1", "task_id": "t", "map_index": 3, "try_number": 2},
        enqueued_at=clock.now - 10,
        claimed_at=clock.now - 7.5,
    )
    waiting = job("gpu", enqueued_at=clock.now - 40)
    hb = beat(mailbox, WORKER, "w1", queues=["gpu", "default"], running_jobs=[mapped.job_id])
    snapshot(
        mailbox,
        SCHEDULER,
        "a",
        workers=[(hb, WORKER)],
        jobs=[mapped],
        queues=[FleetQueue(queue="gpu", pending=0)],
        written_at=clock.now,
    )
    snapshot(
        mailbox,
        SCHEDULER,
        "b",
        jobs=[waiting],
        queues=[FleetQueue(queue="gpu", pending=1, oldest_enqueued_at=clock.now - 40)],
        written_at=clock.now,
    )
    snapshot(  # a scheduler that stopped: its jobs and queues are not shown
        mailbox,
        SCHEDULER,
        "c",
        jobs=[job("gpu")],
        queues=[FleetQueue(queue="gpu", pending=9, oldest_enqueued_at=clock.now - 900)],
        written_at=clock.now - STALE - 1,
    )
    fleet = read(mailbox, clock)
    gpu = next(q for q in fleet.queues if q.queue == "gpu")
    assert (gpu.pending, gpu.oldest_age, gpu.workers) == (1, 40.0, ["w1"])
    assert [j.job_id for j in fleet.jobs] == [mapped.job_id, waiting.job_id]
    claimed = fleet.jobs[0]
    assert claimed.claim_latency == 2.5
    assert claimed.task.path == "dags/d%20x/runs/r%2F1/tasks/t/mapped/3"
    (running,) = fleet.workers[0].running
    assert running.task == claimed.task
    assert [s.fresh for s in fleet.snapshots] == [True, True, False]
    assert filter_jobs(fleet.jobs, search="D X") == [claimed]
    assert filter_jobs(fleet.jobs, states=["queued"], queue="gpu")[0].job_id == waiting.job_id


def test_unmapped_task_link_and_callback_jobs() -> None:
    ref = task_ref({"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1})
    assert ref is not None and ref.path == "dags/d/runs/r/tasks/t"
    assert task_ref({}) is None


def test_cost_per_hour_from_counts_since_start(mailbox: Mailbox, clock: Clock) -> None:
    hb = beat(
        mailbox,
        WORKER,
        "w1",
        started_at=clock.now - 7200,
        sent_at=clock.now,
        requests={"GET": 1600, "PUT": 200, "LIST": 20, "DELETE": 10},
    )
    snapshot(
        mailbox,
        SCHEDULER,
        "a",
        workers=[(hb, WORKER)],
        written_at=clock.now,
        requests={"GET": 2000, "PUT": 2000},
    )
    rows = {r.name: r for r in read(mailbox, clock, own_since=clock.now - 3600).cost}
    worker = rows["w1"]
    assert worker.requests_per_hour == {"DELETE": 5.0, "GET": 800.0, "LIST": 10.0, "PUT": 100.0}
    # 800 GET at $0.0004, 110 PUT+LIST at $0.005 per 1,000; DELETE is free
    assert worker.usd_per_hour == pytest.approx(0.00032 + 0.00055)
    assert worker.usd_per_month == pytest.approx(worker.usd_per_hour * 730)
    scheduler = rows["a"]  # snapshot started_at is 2 h before written_at
    assert scheduler.requests_per_hour == {"GET": 1000.0, "PUT": 1000.0}
    assert rows["this api-server"].side == "dashboard"


def test_filters(mailbox: Mailbox, clock: Clock) -> None:
    gpu = beat(mailbox, WORKER, "edge-A", queues=["gpu"])
    beat(mailbox, WORKER, "other", queues=["default"])
    snapshot(mailbox, SCHEDULER, "a", workers=[(gpu, WORKER)], written_at=clock.now)
    workers = read(mailbox, clock).workers
    assert [w.name for w in filter_workers(workers, search="EDGE")] == ["edge-A"]
    assert [w.name for w in filter_workers(workers, states=[UNKNOWN])] == ["other"]
    assert [w.name for w in filter_workers(workers, queue="gpu")] == ["edge-A"]
    assert filter_workers(workers, queue="gpu", states=[UNKNOWN]) == []
