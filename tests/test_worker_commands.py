"""Steering a worker through the bucket: the scheduler side's FleetControl writes a command,
the worker reads it when the all-queues marker rang and obeys it within a poll, and reports
what it applied in its heartbeat. Forged, foreign and stale commands are ignored with the
reason logged. (The in-memory store: the logic above the store; the end-to-end test runs
real workers on SeaweedFS.)"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from edge_mailbox.executor.fleet_control import Change, FleetControl, FleetError
from edge_mailbox.mailbox.errors import NotFound
from edge_mailbox.mailbox.memstore import MemoryStore
from edge_mailbox.mailbox.models import MaintenanceSource, WorkerCommand, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, SigningKey
from edge_mailbox.worker.control import RunDir
from edge_mailbox.worker.runners import RunnerPool
from edge_mailbox.worker.settings import WorkerSettings
from edge_mailbox.worker.worker import Worker
from tests.test_worker_claim_order import SCHEDULER, manifest

WORKER_KEY = SigningKey.generate()


def make_worker(store: MemoryStore, tmp_path: Path, name: str = "w1") -> Worker:
    settings = WorkerSettings(
        store=store.config,
        name=name,
        queues=("q",),
        concurrency=2,
        key=WORKER_KEY,
        scheduler_keys=KeyRing([SCHEDULER.public]),
        poll_max=0.2,
    )
    w = Worker(settings, tmp_path / "logs", store=store, run_dir=RunDir(tmp_path / name))
    w.runners = RunnerPool(lambda spec: 0)
    return w


def turn(w: Worker) -> None:
    """One turn of the worker's loop, its poll due now."""
    w.next_poll = 0.0
    w._loop_once()


def control(store: MemoryStore) -> FleetControl:
    return FleetControl(Mailbox(store), SCHEDULER, KeyRing([WORKER_KEY.public]), 60.0)


def heartbeat(store: MemoryStore, name: str = "w1"):
    return Mailbox(store).read_heartbeat(name, KeyRing([WORKER_KEY.public])).model


def queue_job(store: MemoryStore, queue: str) -> str:
    mailbox = Mailbox(store)
    job = manifest(queue, 1, time.time())
    mailbox.put_manifest(job, SCHEDULER, ttl=600)
    mailbox.bump_marker(queue)
    return job.job_id


def exists(store: MemoryStore, key: str) -> bool:
    try:
        store.head(key)
    except NotFound:
        return False
    return True


def claimed(store: MemoryStore, job_id: str) -> bool:
    return exists(store, Mailbox(store).layout.claim(job_id))


@pytest.fixture
def started(mem_store, tmp_path):
    w = make_worker(mem_store, tmp_path)
    w._heartbeat(WorkerState.STARTING)
    turn(w)
    yield w
    w.runners.close()


def test_maintenance_through_the_bucket(mem_store, started, caplog) -> None:
    w = started
    command = control(mem_store).send("w1", "alice", Change(maintenance=True, comment="swap"))
    turn(w)
    assert w.state is WorkerState.MAINTENANCE
    hb = heartbeat(mem_store)  # sent at once, not at the next interval
    assert hb.command_seq == command.seq == 1
    assert hb.state is WorkerState.MAINTENANCE
    assert hb.maintenance_by == [MaintenanceSource.REMOTE]
    assert "alice: swap" in hb.maintenance_comment
    job = queue_job(mem_store, "q")
    turn(w)
    assert not claimed(mem_store, job)  # in maintenance: no new job

    control(mem_store).send("w1", "alice", Change(maintenance=False))
    turn(w)
    assert w.state is WorkerState.IDLE or claimed(mem_store, job)
    turn(w)
    assert claimed(mem_store, job)
    assert heartbeat(mem_store).command_seq == 2


def test_local_and_remote_maintenance_hold_until_both_end(mem_store, started) -> None:
    w = started
    w.run_dir.set_maintenance(True, "local work")
    turn(w)
    control(mem_store).send("w1", "bob", Change(maintenance=True, comment="remote"))
    turn(w)
    assert heartbeat(mem_store).maintenance_by == [
        MaintenanceSource.LOCAL,
        MaintenanceSource.REMOTE,
    ]
    control(mem_store).send("w1", "bob", Change(maintenance=False))
    turn(w)
    assert w.state is WorkerState.MAINTENANCE  # the host's still holds
    assert heartbeat(mem_store).maintenance_by == [MaintenanceSource.LOCAL]
    time.sleep(0.01)  # a new mtime for the control file
    w.run_dir.set_maintenance(False)
    turn(w)
    assert w.state is WorkerState.IDLE


def test_queues_and_concurrency_follow_the_command(mem_store, started) -> None:
    w = started
    fleet = control(mem_store)
    command = fleet.send("w1", "carol", Change(queues=("b",), concurrency=5))
    assert command.queues == ["b"] and command.concurrency == 5
    turn(w)
    assert w.queues == ("b",) and w.free_slots == 5
    old_queue, new_queue = queue_job(mem_store, "q"), queue_job(mem_store, "b")
    turn(w)
    assert claimed(mem_store, new_queue) and not claimed(mem_store, old_queue)
    hb = heartbeat(mem_store)
    assert hb.queues == ["b"] and hb.concurrency == 5

    command = fleet.send("w1", "carol", Change(add_queues=("q",), remove_queues=("b",)))
    assert command.queues == ["q"] and command.concurrency == 5  # the rest kept
    turn(w)
    turn(w)
    assert claimed(mem_store, old_queue)


def test_forged_foreign_and_stale_commands_are_ignored(mem_store, started, caplog) -> None:
    w = started
    mailbox = Mailbox(mem_store)
    caplog.set_level(logging.WARNING, "edge_mailbox.worker")

    def forged(key: SigningKey, worker: str, seq: int) -> WorkerCommand:
        command = WorkerCommand(
            worker=worker,
            seq=seq,
            maintenance=True,
            queues=["evil"],
            concurrency=1,
            issued_by="mallory",
            issued_at=time.time(),
        )
        mailbox.put_command(command, key)
        return command

    forged(SigningKey.generate(), "w1", 7)  # not the scheduler's key
    turn(w)
    assert w.queues == ("q",) and "ignoring command object" in caplog.text
    assert "unknown" in caplog.text or "signature" in caplog.text

    # The scheduler's signature, but bound to another worker, copied to w1's key.
    other = WorkerCommand(
        worker="w2", seq=9, queues=["evil"], concurrency=1, issued_by="x", issued_at=time.time()
    )
    mailbox.put_command(other, SCHEDULER)
    raw = mem_store.get(mailbox.layout.command("w2")).body
    mem_store.put(mailbox.layout.command("w1"), raw)
    mailbox.bump_marker("q")
    caplog.clear()
    turn(w)
    assert w.queues == ("q",) and "ignoring command object" in caplog.text

    # An honest command, then an older honest one written back.
    fleet = control(mem_store)
    old = fleet.send("w1", "dave", Change(concurrency=3))
    raw_old = mem_store.get(mailbox.layout.command("w1")).body
    turn(w)
    fleet.send("w1", "dave", Change(concurrency=4))
    turn(w)
    assert w.concurrency == 4
    mem_store.put(mailbox.layout.command("w1"), raw_old)
    mailbox.bump_marker("q")
    caplog.clear()
    turn(w)
    assert w.concurrency == 4 and f"ignoring command {old.seq}" in caplog.text


def test_a_restarted_worker_keeps_its_commanded_state_and_refuses_older_ones(
    mem_store, tmp_path, started, caplog
) -> None:
    fleet = control(mem_store)
    mailbox = Mailbox(mem_store)
    fleet.send("w1", "erin", Change(maintenance=True, comment="x"))
    raw_first = mem_store.get(mailbox.layout.command("w1")).body
    turn(started)
    fleet.send("w1", "erin", Change(queues=("q", "r")))  # still in maintenance
    turn(started)
    started.runners.close()

    again = make_worker(mem_store, tmp_path)  # the same run folder
    turn(again)
    assert again.state is WorkerState.MAINTENANCE and again.queues == ("q", "r")
    mem_store.put(mailbox.layout.command("w1"), raw_first)
    mailbox.bump_marker("q")
    turn(again)
    assert again.queues == ("q", "r") and "applied already" in caplog.text
    again.runners.close()


def test_shutdown_drains_and_does_not_stop_the_next_process(mem_store, tmp_path, started):
    fleet = control(mem_store)
    command = fleet.send("w1", "frank", Change(shutdown=True))
    turn(started)
    assert started.stopping
    assert heartbeat(mem_store).command_seq == command.seq
    started.runners.close()

    later = make_worker(mem_store, tmp_path)  # started after the command was issued
    turn(later)
    assert not later.stopping and later.orders.seq == command.seq
    later.runners.close()


def test_an_idle_worker_pays_nothing_more_for_commands(mem_store, started) -> None:
    """One conditional GET of the all-queues marker per idle poll, as before; the command
    object is read only when that marker rang."""
    before = mem_store.counter.snapshot()
    for _ in range(10):
        turn(started)
    after = mem_store.counter.snapshot()
    assert after["GET"] - before["GET"] == 10
    assert after["LIST"] == before["LIST"] and after["PUT"] == before["PUT"]


def test_bad_actions_are_refused_with_the_reason(mem_store, started) -> None:
    fleet = control(mem_store)
    with pytest.raises(FleetError, match="no verified heartbeat"):
        fleet.send("nobody", "x", Change(maintenance=True))
    with pytest.raises(FleetError, match="at least one queue"):
        fleet.send("w1", "x", Change(remove_queues=("q",)))
    with pytest.raises(FleetError, match="between 1 and 1024"):
        fleet.send("w1", "x", Change(concurrency=5000))
    with pytest.raises(FleetError, match="is alive"):
        fleet.forget("w1")
    started._heartbeat(WorkerState.OFFLINE)
    fleet.send("w1", "x", Change(maintenance=True))
    fleet.forget("w1")
    mailbox = Mailbox(mem_store)
    assert not exists(mem_store, mailbox.layout.heartbeat("w1"))
    assert not exists(mem_store, mailbox.layout.command("w1"))
