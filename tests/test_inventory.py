"""What ``airflow edge-mailbox workers|queues|jobs|sweep`` report and delete, on the in-memory
store: every key they read is parsed by Layout, and a stray object in the bucket is shown or
skipped, never a crash nor a row of nonsense."""

from __future__ import annotations

import time

import pytest

from edge_mailbox.executor.inventory import jobs, queues, sweep, workers
from edge_mailbox.mailbox.layout import encode_name, new_id
from edge_mailbox.mailbox.memstore import MemoryStore
from edge_mailbox.mailbox.models import (
    Claim,
    Heartbeat,
    JobManifest,
    JobResult,
    JobState,
    Revocation,
    WorkerState,
)
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.signer import KeyRing, SealKey, SigningKey

TI = {"id": "t1", "dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1, "map_index": -1}
SCHEDULER, WORKER = SigningKey.generate(), SigningKey.generate()
TRUSTED = KeyRing([WORKER.public])


@pytest.fixture
def mailbox(mem_store: MemoryStore) -> Mailbox:
    return Mailbox(mem_store)


def queued(mailbox: Mailbox, queue: str = "default", *, at: float | None = None) -> JobManifest:
    job_id = new_id(at)
    manifest = JobManifest(
        job_id=job_id,
        queue=queue,
        enqueued_at=at or time.time(),
        ti=TI,
        dag_rel_path="d.py",
        bundle_info={"name": "dags-folder", "version": None},
        seal_key=SealKey.derive(SCHEDULER.seed(), job_id).public,
        scheduler_version="0.1.0",
    )
    mailbox.put_manifest(manifest, SCHEDULER, ttl=3600)
    return manifest


def claimed(mailbox: Mailbox, *, at: float | None = None) -> str:
    manifest = queued(mailbox, at=at)
    key = mailbox.layout.manifest(
        manifest.queue, manifest.job_id, manifest.priority, manifest.enqueued_at
    )
    claim = Claim(
        job_id=manifest.job_id,
        queue=manifest.queue,
        worker="w1",
        seal_key=SealKey.generate().public,
        claimed_at=time.time(),
        nonce=nonce(),
        worker_version="0.1.0",
        manifest=mailbox.store.get(key).body.decode(),
    )
    mailbox.create_claim(claim, WORKER)
    mailbox.store.delete(key)  # a claimed job leaves its queue
    return manifest.job_id


def finished(mailbox: Mailbox, state: JobState = JobState.SUCCESS, **kw: float) -> str:
    job_id = claimed(mailbox, **kw)
    now = time.time()
    result = JobResult(
        job_id=job_id, worker="w1", state=state, exit_code=0, started_at=now, finished_at=now
    )
    mailbox.put_result(result, WORKER)
    return job_id


def revoked(mailbox: Mailbox, **kw: float) -> str:
    job_id = claimed(mailbox, **kw)
    revocation = Revocation(job_id=job_id, reason="test", revoked_at=time.time())
    mailbox.put_revocation(revocation, SCHEDULER)
    return job_id


def beat(mailbox: Mailbox, name: str) -> None:
    heartbeat = Heartbeat(
        worker=name,
        state=WorkerState.IDLE,
        queues=["default"],
        concurrency=4,
        free_slots=3,
        running_jobs=["j"],
        version="0.1.0",
        sent_at=time.time(),
    )
    mailbox.put_heartbeat(heartbeat, WORKER, ttl=600)


def test_workers_rows_name_every_object_under_workers(mailbox: Mailbox) -> None:
    beat(mailbox, "edge 1")
    long_name = "w" * 200  # its key segment is hashed: the name cannot be read back
    beat(mailbox, long_name)
    mailbox.store.put(f"{mailbox.layout.heartbeats}notes.txt", b"left by hand")
    rows = {row.worker: row for row in workers(mailbox, TRUSTED, timeout=60)}
    assert rows["edge 1"].state == "idle" and rows["edge 1"].slots == "1/4"
    assert rows[encode_name(long_name, kind="worker")].state.startswith("unverified")
    assert rows[f"{mailbox.layout.heartbeats}notes.txt"].state == "not a heartbeat"


def test_queues_count_pending_jobs_per_queue_and_skip_strays(mailbox: Mailbox) -> None:
    queued(mailbox, "gpu.large", at=time.time() - 60)
    queued(mailbox, "gpu.large")
    queued(mailbox, "default")
    mailbox.bump_marker("idle")
    mailbox.store.put(f"{mailbox.layout.queues}README", b"")  # beside the queues' folders
    rows = {row.queue: row for row in queues(mailbox)}
    assert sorted(rows) == ["default", "gpu.large", "idle"]
    assert rows["gpu.large"].pending == 2 and 59 < rows["gpu.large"].oldest_age < 120
    assert rows["idle"].pending == 0 and rows["idle"].oldest_age is None


def test_jobs_report_each_recent_jobs_state(mailbox: Mailbox) -> None:
    old = finished(mailbox, at=time.time() - 7200)
    running, done, failed = claimed(mailbox), finished(mailbox), finished(mailbox, JobState.FAILED)
    gone = revoked(mailbox)
    mailbox.store.put(f"{mailbox.layout.job_root(running)}stray.txt", b"")
    mailbox.store.put(f"{mailbox.layout.jobs}not-a-job", b"")
    rows = {row.job_id: row for row in jobs(mailbox, TRUSTED, since_seconds=3600)}
    assert old not in rows
    states = {job: rows[job].state for job in (running, done, failed, gone)}
    assert states == {running: "claimed", done: "success", failed: "failed", gone: "revoked"}
    assert rows[done].task == "d.t try 1" and rows[done].worker == "w1"
    assert all(0 <= row.age < 60 for row in rows.values())


def test_sweep_deletes_only_old_finished_jobs_folders(mailbox: Mailbox) -> None:
    hour_ago = time.time() - 3600
    old_done, old_gone = finished(mailbox, at=hour_ago), revoked(mailbox, at=hour_ago)
    old_running, new_done = claimed(mailbox, at=hour_ago), finished(mailbox)
    stray = f"{mailbox.layout.job_root(old_done)}stray.txt"
    mailbox.store.put(stray, b"")
    assert sweep(mailbox, older_than=600, dry_run=True) == 5  # 2 + stray, then 2
    assert sweep(mailbox, older_than=600) == 5
    layout = mailbox.layout
    left = {layout.parse_job_key(e.key) for e in mailbox.store.list_all(layout.jobs)}
    assert left == {(old_running, "claim"), (new_done, "claim"), (new_done, "result")}
    assert old_gone not in {job for job, _ in left}
