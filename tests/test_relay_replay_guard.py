"""What a bucket writer can put back is never acted on twice (security review, items 2-5, 8,
10): a relay request saved and put back after it was answered, a long job's relay after a
scheduler restart, a manifest replayed after its job ended, refused manifests in a queue, a
result written by another worker, and a flooded inbox.

Real SeaweedFS, real reconcilers, the worker's real relay transport; the Execution API is the
counting server of test_relay_two_reconcilers."""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import socketserver
import threading
import time

import httpx
import pytest
import test_relay_two_reconcilers
from conftest import store_config
from test_reconciler_ownership import Scheduler, drain, finish, wait_until
from test_relay_two_reconcilers import (
    TI,
    claimed_job,
    make_settings,
    reconciler,
)

from edge_mailbox.executor.reconciler import Job
from edge_mailbox.mailbox.codec import binding
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import Claim, JobManifest, JobResult, JobState, RelayCall
from edge_mailbox.mailbox.protocol import RECORD_TTL, Mailbox, nonce
from edge_mailbox.mailbox.relaycodec import seal_call
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SealKey, SigningKey, sign_claims
from edge_mailbox.worker.runners import RunnerPool
from edge_mailbox.worker.settings import WorkerSettings
from edge_mailbox.worker.transport import BASE_URL, RelayTransport
from edge_mailbox.worker.worker import Worker

pytestmark = pytest.mark.seaweed
api = test_relay_two_reconcilers.api  # the counting Execution API fixture
HEARTBEAT = f"/execution/task-instances/{TI}/heartbeat"


def world(seaweed, prefix, api_url: str, **overrides):
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = dataclasses.replace(
        make_settings(config, scheduler, KeyRing([worker.public]), "", api_url), **overrides
    )
    return scheduler, worker, config, settings, Mailbox(ObjectStore(config))


def call_in_background(transport: RelayTransport) -> tuple[threading.Thread, list]:
    answers: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            answers.append(client.put(f"task-instances/{TI}/heartbeat", json={"pid": 1}))

    thread = threading.Thread(target=call)
    thread.start()
    return thread, answers


def saved_request(mailbox: Mailbox, job_id: str) -> tuple[str, bytes]:
    """The first relay request of the job, as the bucket holds it (an attacker's copy)."""
    prefix = f"{mailbox.layout.inbox}{job_id}/request-"
    deadline = time.monotonic() + 30
    while True:
        keys = [e.key for e in mailbox.store.list_all(prefix)]
        if keys:
            return keys[0], mailbox.store.get(keys[0]).body
        assert time.monotonic() < deadline, "the request never reached the inbox"
        time.sleep(0.05)


def inbox_empty(mailbox: Mailbox) -> bool:
    return not list(mailbox.store.list_all(mailbox.layout.inbox))


def test_a_request_put_back_after_a_scheduler_restart_is_not_replayed(seaweed, prefix, api) -> None:
    scheduler, worker, config, settings, mailbox = world(seaweed, prefix, api.url)
    transport = claimed_job(mailbox, scheduler, worker)
    thread, answers = call_in_background(transport)
    key, body = saved_request(mailbox, transport.job_id)
    first = reconciler(config, settings)
    first.start()
    thread.join(30)
    first.stop()
    assert answers[0].status_code == 200 and api.calls == {HEARTBEAT: 1}
    mailbox.store.put(key, body)  # put back, to a scheduler that restarted
    second = reconciler(config, settings)
    second.start()
    try:
        wait_until(lambda: inbox_empty(mailbox), "the replayed request removed")
        assert api.calls == {HEARTBEAT: 1}
    finally:
        second.stop()


def test_a_request_put_back_to_a_peer_is_not_replayed(seaweed, prefix, api) -> None:
    """A peer that knows the job, but not that request: the lease it finds tells it someone
    took the request, and the answer in the bucket that it was answered."""
    scheduler, worker, config, settings, mailbox = world(
        seaweed, prefix, api.url, execution_api_timeout=1
    )
    transport = claimed_job(mailbox, scheduler, worker)
    peer = reconciler(config, settings)
    peer.track(Job(job_id=transport.job_id, ti_id=TI, queue="default", owned=False))
    thread, answers = call_in_background(transport)
    key, body = saved_request(mailbox, transport.job_id)
    first = reconciler(config, settings)
    first.start()
    thread.join(30)
    first.stop()
    assert answers[0].status_code == 200
    mailbox.store.put(key, body)
    peer.start()
    try:
        wait_until(lambda: inbox_empty(mailbox), "the replayed request removed", timeout=60)
        assert api.calls == {HEARTBEAT: 1}
    finally:
        peer.stop()


def forged_request(mailbox: Mailbox, transport: RelayTransport, request_id: str, sent_at: float):
    """A request the worker really signed (its key), with an id and time of our choosing."""
    call = RelayCall(method="PUT", path=f"task-instances/{TI}/heartbeat", query="", headers={})
    request = seal_call(
        call,
        transport.scheduler_seal_key,
        mailbox.seal_context(transport.job_id, request_id, "request"),
        transport.job_id,
        request_id,
    )
    mailbox.put_request(request.model_copy(update={"sent_at": sent_at}), transport.worker_key)
    return mailbox.layout.inbox_request(transport.job_id, request_id)


def test_old_requests_and_ones_below_the_high_water_mark_are_refused(seaweed, prefix, api) -> None:
    scheduler, worker, config, settings, mailbox = world(seaweed, prefix, api.url)
    transport = claimed_job(mailbox, scheduler, worker)
    r = reconciler(config, settings)
    r.start()
    try:
        # Its id's time a second back (its sent_at is now): below every id the job mints
        # later, even within the same millisecond, where the ids' random part decides.
        low = new_id(time.time() - 1)
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 200
        stale = forged_request(mailbox, transport, low, time.time())
        too_old = forged_request(
            mailbox, transport, new_id(), time.time() - settings.relay_request_max_age - 5
        )
        mailbox.ring_inbox()
        wait_until(lambda: inbox_empty(mailbox), "the refused requests removed")
        assert api.calls == {HEARTBEAT: 1}
        assert stale in r.rejected and too_old in r.rejected
    finally:
        r.stop()


def signed_in_the_past(mailbox: Mailbox, scheduler: SigningKey, worker: SigningKey, ago: float):
    """A job queued and claimed ``ago`` seconds back, with a one-hour manifest_ttl."""
    then = time.time() - ago
    job_id = new_id(then)
    manifest = JobManifest(
        job_id=job_id,
        queue="default",
        enqueued_at=then,
        ti={"id": TI, "dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1},
        dag_rel_path="d.py",
        bundle_info={"name": "dags-folder", "version": None},
        seal_key=SealKey.derive(scheduler.seed(), job_id).public,
        scheduler_version="0.1.0",
    )
    bind = binding(mailbox.bucket, mailbox.layout.prefix, queue="default", job_id=job_id)
    token = sign_claims(
        manifest.model_dump(mode="json"), scheduler, typ="job", bind=bind, ttl=3600, now=then
    )
    seal_key = SealKey.generate()
    claim = Claim(
        job_id=job_id,
        queue="default",
        worker="w1",
        seal_key=seal_key.public,
        claimed_at=then + 1,
        nonce=nonce(),
        worker_version="0.1.0",
        manifest=token,
    )
    claim_bind = binding(mailbox.bucket, mailbox.layout.prefix, job_id=job_id)
    claim_token = sign_claims(
        claim.model_dump(mode="json"),
        worker,
        typ="claim",
        bind=claim_bind,
        ttl=RECORD_TTL,
        now=then + 1,
    )
    mailbox.store.create(mailbox.layout.claim(job_id), claim_token.encode())
    return RelayTransport(
        mailbox,
        job_id,
        worker_key=worker,
        seal_key=seal_key,
        scheduler_seal_key=manifest.seal_key,
        scheduler_keys=KeyRing([scheduler.public]),
        deadline=30,
    )


def test_a_job_queued_longer_ago_than_the_manifest_ttl_keeps_its_relay(
    seaweed, prefix, api
) -> None:
    """A restarted scheduler rebuilds the job from its claim: the embedded manifest is
    checked as of the claim, not now (item 3)."""
    scheduler, worker, config, settings, mailbox = world(seaweed, prefix, api.url)
    transport = signed_in_the_past(mailbox, scheduler, worker, ago=2 * 3600)
    r = reconciler(config, settings)  # knows nothing of the job: as after a restart
    r.start()
    try:
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 200
        assert api.calls == {HEARTBEAT: 1}
    finally:
        r.stop()


def test_calls_of_a_job_airflow_does_not_run_are_refused(seaweed, prefix, api) -> None:
    """A manifest replayed after its job ended, claimed again: Airflow's database says the
    try is over, so its claim is not reported and its calls get 409 (item 4)."""
    scheduler, worker, config, settings, mailbox = world(seaweed, prefix, api.url)
    transport = claimed_job(mailbox, scheduler, worker)
    asked: list[tuple[str, str]] = []
    sched = Scheduler(config, settings)
    sched.reconciler.is_current = lambda ti_id, job_id: asked.append((ti_id, job_id)) or False
    with sched:
        mailbox.notify(mailbox.layout.inbox_claim(transport.job_id))
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 409
        wait_until(lambda: inbox_empty(mailbox), "the stale job's notices removed")
        assert api.calls == {}
        assert drain(sched.events) == []
        assert asked == [(TI, transport.job_id)]


def test_a_manifest_replayed_after_cleanup_meets_its_claim(seaweed, prefix, tmp_path) -> None:
    """The claim is the job's tombstone, kept until the manifest expires: a manifest put back
    into its queue after the job was cleaned up is not claimed again, even by a freshly
    restarted worker that remembers nothing (item 4)."""
    scheduler, worker, config, settings, mailbox = world(
        seaweed, prefix, "http://127.0.0.1:9/", cleanup_success_after=0, worker_check_interval=1
    )
    transport = claimed_job(mailbox, scheduler, worker)
    job_id = transport.job_id
    (manifest_key,) = [e.key for e in mailbox.store.list_all(mailbox.layout.queue_jobs("default"))]
    manifest = mailbox.store.get(manifest_key).body
    claim = mailbox.store.get(mailbox.layout.claim(job_id)).body
    with Scheduler(config, settings) as sched:
        sched.reconciler.track(
            Job(job_id=job_id, ti_id=TI, queue="default", ti_key="k", manifest_key=manifest_key)
        )
        mailbox.notify(mailbox.layout.inbox_claim(job_id))
        finish(mailbox, worker, job_id)
        wait_until(
            lambda: not list(mailbox.store.list_all(f"{mailbox.layout.job_root(job_id)}results/")),
            "the job cleaned up",
        )
        assert [e[0] for e in drain(sched.events)] == ["running", "success"]
        assert mailbox.store.get(mailbox.layout.claim(job_id)).body == claim
    mailbox.store.put(manifest_key, manifest)  # replayed by a bucket writer
    restarted = Worker(
        WorkerSettings(
            store=config,
            name="w1",
            queues=("default",),
            concurrency=1,
            key=worker,
            scheduler_keys=KeyRing([scheduler.public]),
        ),
        tmp_path,
    )
    restarted.runners = RunnerPool(lambda spec: 0)
    try:
        assert restarted.finder.scan("default") is False
        assert not restarted.running
        assert mailbox.store.get(mailbox.layout.claim(job_id)).body == claim
    finally:
        restarted.runners.close()


def test_refused_manifests_are_removed_from_the_queue(seaweed, prefix) -> None:
    """Only the scheduler side may remove manifests: it deletes what it would refuse (item 5)."""
    scheduler, worker, config, settings, mailbox = world(
        seaweed, prefix, "http://127.0.0.1:9/", worker_check_interval=1, queue_sweep_interval=1
    )
    stranger = SigningKey.generate()
    foreign = claimed_job(Mailbox(ObjectStore(config)), stranger, worker)  # a stranger's manifest
    junk = f"{mailbox.layout.queue_jobs('default')}not-a-manifest.txt"
    mailbox.store.put(junk, b"hello")
    honest = claimed_job(mailbox, scheduler, worker)  # ours, from a peer scheduler

    def queue_keys() -> set[str]:
        return {e.key for e in mailbox.store.list_all(mailbox.layout.queue_jobs("default"))}

    assert len(queue_keys()) == 3
    with Scheduler(config, settings) as sched:
        sched.reconciler.track(Job(job_id=new_id(), ti_id=TI, queue="default"))
        wait_until(lambda: len(queue_keys()) == 1, "the refused objects removed")
        (left,) = queue_keys()
        assert honest.job_id in left and foreign.job_id not in left


def test_another_workers_result_does_not_hide_the_claim_holders(seaweed, prefix) -> None:
    """Another trusted worker writes a result for the job first: it is not believed, and the
    claim holder's result, written after it, is still read (item 8)."""
    scheduler, worker, config, settings, mailbox = world(seaweed, prefix, "http://127.0.0.1:9/")
    intruder = SigningKey.generate()
    settings.worker_keys.replace_with(KeyRing([worker.public, intruder.public]))
    transport = claimed_job(mailbox, scheduler, worker)
    job_id = transport.job_id
    now = time.time()
    forged = JobResult(
        job_id=job_id,
        worker="w1",
        state=JobState.FAILED,
        exit_code=1,
        started_at=now,
        finished_at=now,
        message="forged",
    )
    with Scheduler(config, settings) as sched:
        sched.reconciler.track(Job(job_id=job_id, ti_id=TI, queue="default", ti_key="k"))
        mailbox.put_result(forged, intruder)
        mailbox.notify(mailbox.layout.inbox_result(job_id))
        finish(mailbox, worker, job_id)
        wait_until(lambda: inbox_empty(mailbox), "the result read")
        events = [e[:2] for e in drain(sched.events)]
        assert ("success", job_id) in events and ("failed", job_id) not in events


def test_a_flooded_inbox_costs_the_same_lists_per_poll(seaweed, prefix) -> None:
    """Thousands of junk items: each poll reads a few pages at most, and goes on where the
    last one stopped (item 10)."""
    _, _, config, settings, mailbox = world(seaweed, prefix, "http://127.0.0.1:9/")
    store = ObjectStore(config)
    for _ in range(3100):  # notices of claims that do not exist
        store.put(mailbox.layout.inbox_claim(new_id()), b"")
    sched = Scheduler(config, settings)  # not started: the test drives its polls
    counter = sched.reconciler.mailbox.store.counter
    lists = []
    for _ in range(3):
        counter.reset()
        sched.reconciler.poll_once()
        lists.append(counter.snapshot()["LIST"])
    assert max(lists) <= 3, lists
    assert inbox_empty(mailbox)  # every item looked at and removed, over the polls


class EchoingApi:
    """An Execution API that refuses every call with a 422 quoting what it was sent, as
    FastAPI's validation errors do."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"detail": [{"input": sent.decode()}]}).encode()
                self.send_response(422)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/execution/"


def test_an_error_answer_to_a_call_written_behind_is_logged_without_its_body(
    seaweed, prefix, caplog
) -> None:
    """The scheduler's log gets the status and its reason, never what the task sent
    (security review, item 14)."""
    echo = EchoingApi()
    scheduler, worker, config, settings, mailbox = world(seaweed, prefix, echo.url)
    transport = claimed_job(mailbox, scheduler, worker)
    r = reconciler(config, settings)
    caplog.set_level(logging.WARNING, logger="edge_mailbox")
    r.start()
    try:
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            secret = "rendered-s3cr3t-value"
            assert client.put(f"task-instances/{TI}/rtif", json={"f": secret}).status_code == 202
        wait_until(lambda: "did not wait for" in caplog.text, "the refusal logged")
        assert "422 Unprocessable" in caplog.text
        assert secret not in caplog.text
    finally:
        r.stop()
        echo.server.shutdown()
