"""The reconciler's fleet snapshot (``fleet/{owner}.jws``), what the dashboard draws from: it
shows the heartbeats the reconciler verified and its jobs and queues, signed so that nothing
else written there is believed; it costs one PUT per ``fleet_snapshot_interval``; dead
schedulers' snapshots are removed once an hour; a failing bucket stops nothing. A real
reconciler driven through its worker check, on the in-memory store with a clock of its own."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import time
from collections.abc import Iterable

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from test_relay_two_reconcilers import TI, claimed_job, make_settings

from edge_mailbox.executor.fleet_snapshot import SnapshotWriter, process_owner
from edge_mailbox.executor.jobs import JobTable, Phase
from edge_mailbox.executor.liveness import Beat, WorkerWatch
from edge_mailbox.executor.reconciler import Job, Reconciler
from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import StoreUnavailable
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.memstore import MemoryStore
from edge_mailbox.mailbox.models import FleetSnapshot, Heartbeat, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, SigningKey, VerificationError


class Clock:
    """The time the store stamps LastModified with and the snapshot writer reads."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: the steps below add up exactly

    def __call__(self) -> float:
        return self.now


class RecordingStore(MemoryStore):
    """The in-memory store, noting the key of each PUT and the prefix of each LIST."""

    def __init__(self, config: StoreConfig, clock: Clock) -> None:
        super().__init__(config, clock=clock)
        self.puts: list[str] = []
        self.lists: list[str] = []

    def put(self, key: str, body: bytes, *, content_type: str = "application/json") -> str:
        self.puts.append(key)
        return super().put(key, body, content_type=content_type)

    def list_page(self, prefix: str, **kwargs):  # type: ignore[override]
        self.lists.append(prefix)
        return super().list_page(prefix, **kwargs)


@dataclasses.dataclass
class Fleet:
    store: RecordingStore
    mailbox: Mailbox
    clock: Clock
    scheduler: SigningKey
    workers: dict[str, SigningKey]
    reconciler: Reconciler

    def check(self, after: float = 0.0) -> None:
        """Let ``after`` seconds pass, then run the reconciler's worker check."""
        self.clock.now += after
        self.reconciler.check_workers()

    def snapshot_puts(self) -> list[str]:
        prefix = self.mailbox.layout.fleet_snapshots
        return [k for k in self.store.puts if k.startswith(prefix)]

    def read(self) -> FleetSnapshot:
        key = self.mailbox.layout.fleet_snapshot(self.reconciler.fleet.owner)
        return self.mailbox.read_fleet_snapshot(key, KeyRing([self.scheduler.public]))


def heartbeat(name: str, state: WorkerState, queues: Iterable[str], running=()) -> Heartbeat:
    return Heartbeat(
        worker=name,
        state=state,
        queues=list(queues),
        concurrency=4,
        free_slots=4 - len(running),
        running_jobs=list(running),
        version="0.1.0",
        metrics={"cpu_percent": 12.5},
        sent_at=time.time(),
    )


@pytest.fixture
def fleet(prefix: str) -> Fleet:
    clock = Clock()
    store = RecordingStore(StoreConfig(bucket="memory-bucket", prefix=prefix), clock)
    scheduler = SigningKey.generate()
    workers = {"w1": SigningKey.generate(), "w2": SigningKey.generate()}
    ring = KeyRing([k.public for k in workers.values()])
    settings = dataclasses.replace(
        make_settings(store.config, scheduler, ring, "", "http://127.0.0.1:9/"),
        worker_check_interval=1,
        fleet_snapshot_interval=30,
    )
    mailbox = Mailbox(store)
    reconciler = Reconciler(mailbox, settings, lambda ti, scope: "token", queue.Queue())
    reconciler.fleet.clock = clock
    return Fleet(store, mailbox, clock, scheduler, workers, reconciler)


def ti_key(task: str) -> TaskInstanceKey:
    return TaskInstanceKey(dag_id="d", task_id=task, run_id="r", try_number=2, map_index=-1)


def test_the_snapshot_shows_verified_workers_jobs_and_queues(fleet: Fleet) -> None:
    mailbox, reconciler = fleet.mailbox, fleet.reconciler
    claimed = claimed_job(mailbox, fleet.scheduler, fleet.workers["w1"]).job_id
    reconciler.track(Job(job_id=claimed, ti_id=TI, queue="default", ti_key=ti_key("t")))
    mailbox.notify(mailbox.layout.inbox_claim(claimed))
    waiting = Job(job_id=new_id(), ti_id="ti-2", queue="default", ti_key=ti_key("u"))
    waiting.enqueued_at = time.time() - 5
    reconciler.track(waiting)
    reconciler.poll_once()  # the claim notice: w1 runs the first job
    running = heartbeat("w1", WorkerState.RUNNING, ["default"], [claimed])
    mailbox.put_heartbeat(running, fleet.workers["w1"], ttl=300)
    idle = heartbeat("w2", WorkerState.IDLE, ["default", "gpu"])
    mailbox.put_heartbeat(idle, fleet.workers["w2"], ttl=300)

    fleet.check()

    snapshot = fleet.read()
    assert snapshot.owner == reconciler.fleet.owner
    workers = {w.heartbeat.worker: w for w in snapshot.workers}
    assert set(workers) == {"w1", "w2"}
    assert workers["w1"].kid == fleet.workers["w1"].kid
    assert workers["w2"].kid == fleet.workers["w2"].kid
    assert workers["w1"].heartbeat.running_jobs == [claimed]
    assert workers["w2"].heartbeat.queues == ["default", "gpu"]
    assert all(w.alive for w in workers.values())
    jobs = {j.job_id: j for j in snapshot.jobs}
    assert jobs[claimed].phase == "running" and jobs[claimed].worker == "w1"
    assert jobs[claimed].claimed_at is not None
    assert jobs[claimed].ti == {
        "dag_id": "d",
        "run_id": "r",
        "task_id": "t",
        "map_index": -1,
        "try_number": 2,
    }
    assert jobs[waiting.job_id].phase == "queued" and jobs[waiting.job_id].worker is None
    assert [j.job_id for j in snapshot.jobs] == [claimed, waiting.job_id]  # newest first
    (default,) = snapshot.queues
    assert (default.queue, default.pending) == ("default", 1)
    assert default.oldest_enqueued_at == waiting.enqueued_at
    assert snapshot.requests["PUT"] > 0 and snapshot.requests["LIST"] > 0

    # Later: w2 goes quiet, the job succeeds and is cleaned up; the page still says so.
    reconciler.jobs.finish(reconciler.jobs[claimed], Phase.SUCCEEDED)
    fleet.check(after=30)
    reconciler.jobs.mark_cleaned(reconciler.jobs[claimed])
    again = running.model_copy(update={"sent_at": running.sent_at + 30})
    mailbox.put_heartbeat(again, fleet.workers["w1"], ttl=300)  # w1 is heard again
    fleet.check(after=100)
    snapshot = fleet.read()
    jobs = {j.job_id: j for j in snapshot.jobs}
    assert jobs[claimed].phase == "succeeded" and jobs[claimed].finished_at is not None
    alive = {w.heartbeat.worker: w.alive for w in snapshot.workers}
    assert alive == {"w1": True, "w2": False}  # 130 s > worker_timeout (120 s)


def test_a_snapshot_not_signed_by_the_scheduler_or_moved_is_refused(fleet: Fleet) -> None:
    fleet.check()
    genuine = fleet.read()
    layout, scheduler_keys = fleet.mailbox.layout, KeyRing([fleet.scheduler.public])
    fleet.mailbox.put_fleet_snapshot(genuine, fleet.workers["w1"])  # a worker's key
    with pytest.raises(VerificationError):
        fleet.read()
    fleet.mailbox.put_fleet_snapshot(genuine, fleet.scheduler)
    moved = layout.fleet_snapshot("another-host:7")
    body = fleet.store.get(layout.fleet_snapshot(genuine.owner)).body
    fleet.store.put(moved, body)  # a genuine snapshot copied to another owner's key
    with pytest.raises(VerificationError):
        fleet.mailbox.read_fleet_snapshot(moved, scheduler_keys)


def test_one_put_per_interval_and_none_when_disabled(fleet: Fleet) -> None:
    for after in (0, 10, 19, 0.5):
        fleet.check(after)
    assert len(fleet.snapshot_puts()) == 1  # 29.5 s
    fleet.check(0.5)
    assert len(fleet.snapshot_puts()) == 2  # 30 s
    for after in (15, 14):
        fleet.check(after)
    assert len(fleet.snapshot_puts()) == 2
    fleet.check(1)
    assert len(fleet.snapshot_puts()) == 3
    assert set(fleet.snapshot_puts()) == {
        fleet.mailbox.layout.fleet_snapshot(fleet.reconciler.fleet.owner)
    }

    fleet.reconciler.fleet.interval = 0
    for _ in range(3):
        fleet.check(after=60)
    assert len(fleet.snapshot_puts()) == 3


def put_foreign(fleet: Fleet, owner: str, written_ago: float) -> str:
    """Another scheduler's snapshot, as the store stamped it ``written_ago`` seconds ago."""
    now = fleet.clock.now
    fleet.clock.now = now - written_ago
    snapshot = FleetSnapshot(owner=owner, written_at=fleet.clock.now, started_at=0.0)
    fleet.mailbox.put_fleet_snapshot(snapshot, fleet.scheduler)
    fleet.clock.now = now
    return fleet.mailbox.layout.fleet_snapshot(owner)


def fleet_keys(fleet: Fleet) -> set[str]:
    return {e.key for e in fleet.mailbox.list_fleet_snapshots()}


def test_dead_schedulers_snapshots_are_removed_once_an_hour(fleet: Fleet) -> None:
    own = fleet.mailbox.layout.fleet_snapshot(fleet.reconciler.fleet.owner)
    dead = put_foreign(fleet, "dead-host:1", written_ago=3700)
    peer = put_foreign(fleet, "peer-host:2", written_ago=60)
    assert fleet_keys(fleet) == {dead, peer}

    def lists_of_fleet_during(checks: int) -> int:
        """How many LISTs of fleet/ ``checks`` worker checks 30 s apart make."""
        before = fleet.store.lists.count(fleet.mailbox.layout.fleet_snapshots)
        for _ in range(checks):
            fleet.check(after=30)
        return fleet.store.lists.count(fleet.mailbox.layout.fleet_snapshots) - before

    assert lists_of_fleet_during(1) == 1
    assert fleet_keys(fleet) == {own, peer}
    later = put_foreign(fleet, "dead-host:3", written_ago=3700)
    assert lists_of_fleet_during(119) == 0  # 59.5 minutes of snapshots
    assert fleet_keys(fleet) == {own, peer, later}
    put_foreign(fleet, "peer-host:2", written_ago=0)  # the peer lives on
    assert lists_of_fleet_during(1) == 1  # an hour after the first cleanup
    assert fleet_keys(fleet) == {own, peer}


def test_a_failing_bucket_is_logged_and_tried_again_next_interval(fleet: Fleet, caplog) -> None:
    dead = put_foreign(fleet, "dead-host:1", written_ago=7200)
    fleet.store.fail_next("put", StoreUnavailable("the bucket is down"))
    with caplog.at_level(logging.WARNING, logger="edge_mailbox.executor.fleet_snapshot"):
        fleet.check()
    assert "fleet snapshot not written (the bucket is down)" in caplog.text
    assert fleet_keys(fleet) == {dead}  # no cleanup either: it follows a written snapshot
    fleet.check(after=29)
    assert fleet_keys(fleet) == {dead}
    fleet.store.fail_next("delete_many", StoreUnavailable("the bucket is down"))
    fleet.check(after=1)
    own = fleet.mailbox.layout.fleet_snapshot(fleet.reconciler.fleet.owner)
    assert fleet_keys(fleet) == {own, dead}  # written; its cleanup failed
    fleet.check(after=30)  # the cleanup is tried at the next interval, not in an hour
    assert fleet_keys(fleet) == {own}


def test_an_oversized_snapshot_drops_finished_jobs_then_the_longest_unheard_workers(
    mem_store, caplog
) -> None:
    """Sixty workers running 2,000 tasks each outgrow the 3 MiB a signed snapshot may have."""
    mailbox, key, now = Mailbox(mem_store), SigningKey.generate(), time.time()
    watch = WorkerWatch(mailbox, KeyRing([]), 120)
    for i in range(60):
        beat = heartbeat(f"w{i:02d}", WorkerState.RUNNING, ["default"], ())
        beat = beat.model_copy(update={"running_jobs": [new_id() for _ in range(2000)]})
        watch.beats[beat.worker] = {"kid": Beat(f'"{i}"', now, now - 100 + i, beat)}
    table = JobTable()
    for i in range(50):
        done = Job(job_id=new_id(), ti_id=f"done-{i}", queue="default", ti_key=ti_key(f"d{i}"))
        table.add(done)
        table.finish(done, Phase.SUCCEEDED)
        done.finished_at = now - 1000 + i
    waiting = [Job(job_id=new_id(), ti_id=f"w-{i}", queue="default") for i in range(5)]
    for job in waiting:
        table.add(job)
    writer = SnapshotWriter(mailbox, key, table, watch, 30, 120, owner="big-host:1")

    with caplog.at_level(logging.WARNING, logger="edge_mailbox.executor.fleet_snapshot"):
        writer.maybe_write()

    snapshot = mailbox.read_fleet_snapshot(
        mailbox.layout.fleet_snapshot("big-host:1"), KeyRing([key.public])
    )
    assert "over its size limit" in caplog.text
    assert {j.job_id for j in snapshot.jobs} == {j.job_id for j in waiting}
    shown = [w.heartbeat.worker for w in snapshot.workers]
    assert 0 < len(shown) < 60
    assert shown == [f"w{i:02d}" for i in range(59, 59 - len(shown), -1)]  # the latest heard


def test_the_owner_of_a_long_host_name_can_be_read_back_from_its_key(monkeypatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "node." * 60)
    owner = process_owner()
    layout = Mailbox(MemoryStore()).layout
    assert owner.startswith("node.node.") and owner.endswith(":" + str(os.getpid()))
    assert layout.parse_fleet_snapshot(layout.fleet_snapshot(owner)) == owner
