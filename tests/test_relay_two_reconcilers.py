"""Two reconcilers (two schedulers, or an old and a new one overlapping) watch one bucket: each
relayed call reaches the Execution API once, and the worker gets its answer.

The Execution API here is a small counting HTTP server on loopback; the bucket is SeaweedFS;
the worker side is the real RelayTransport inside an httpx client, as the Task SDK uses it."""

from __future__ import annotations

import contextlib
import http.server
import json
import queue
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from conftest import store_config

from edge_mailbox.executor.reconciler import QUIET_POLLS, Job, Reconciler
from edge_mailbox.executor.settings import ExecutorSettings
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import Claim, JobManifest, JobResult, JobState
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SealKey, SigningKey
from edge_mailbox.worker.transport import BASE_URL, RelayTransport

TI = "01a20147-3ff0-76e2-ac44-bf7425a784de"


class CountingApi:
    """Answers every call after a short pause (to widen any race), counting them by path and
    keeping their order; the first ``fail_first`` calls get a 503."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.order: list[str] = []  # paths, as each call was answered
        self.fail_first = 0
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.calls[self.path] += 1
                time.sleep(0.3)
                failing = sum(api.calls.values()) <= api.fail_first
                if not failing:
                    api.order.append(self.path)
                authorized = self.headers.get("authorization") == "Bearer execution-token"
                body = json.dumps({"ok": True, "authorized": authorized}).encode()
                self.send_response(503 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PATCH = do_PUT  # /run

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/execution/"


@pytest.fixture
def api() -> Iterator[CountingApi]:
    server = CountingApi()
    yield server
    server.server.shutdown()


def make_settings(config, scheduler: SigningKey, ring: KeyRing, spec: str, api_url: str):
    return ExecutorSettings(
        store=config,
        signing_key=scheduler,
        worker_keys=ring,
        worker_keys_spec=spec,
        manifest_ttl=600,
        poll_active=0.02,
        poll_idle=0.02,
        list_interval=1,
        worker_timeout=120,
        cleanup_success_after=300,
        cleanup_failed_after=300,
        worker_check_interval=60,
        relay_threads=4,
        execution_api_url=api_url,
        execution_api_timeout=10,
    )


def claimed_job(mailbox: Mailbox, scheduler: SigningKey, worker: SigningKey) -> RelayTransport:
    """A manifest, the worker's claim of it, and the worker's relay transport for it."""
    job_id = new_id()
    manifest = JobManifest(
        job_id=job_id,
        queue="default",
        enqueued_at=time.time(),
        ti={"id": TI, "dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1},
        dag_rel_path="d.py",
        bundle_info={"name": "dags-folder", "version": None},
        seal_key=SealKey.derive(scheduler.seed(), job_id).public,
        scheduler_version="0.1.0",
    )
    key = mailbox.put_manifest(manifest, scheduler, ttl=600)
    seal_key = SealKey.generate()
    mailbox.create_claim(
        Claim(
            job_id=job_id,
            queue="default",
            worker="w1",
            seal_key=seal_key.public,
            claimed_at=time.time(),
            nonce=nonce(),
            worker_version="0.1.0",
            manifest=mailbox.store.get(key).body.decode(),
        ),
        worker,
    )
    return RelayTransport(
        mailbox,
        job_id,
        worker_key=worker,
        seal_key=seal_key,
        scheduler_seal_key=manifest.seal_key,
        scheduler_keys=KeyRing([scheduler.public]),
        deadline=60,
    )


def reconciler(config, settings: ExecutorSettings) -> Reconciler:
    r = Reconciler(
        Mailbox(ObjectStore(config)), settings, lambda ti, scope: f"{scope}-token", queue.Queue()
    )
    r.outstanding = lambda: 1  # poll fast, as while jobs run
    return r


def test_each_relayed_call_is_executed_once(seaweed, prefix, api) -> None:
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = make_settings(config, scheduler, KeyRing([worker.public]), "", api.url)
    reconcilers = [reconciler(config, settings) for _ in range(2)]
    for r in reconcilers:
        r.start()
    try:
        transport = claimed_job(Mailbox(ObjectStore(config)), scheduler, worker)
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            for _ in range(6):
                answer = client.put(f"task-instances/{TI}/heartbeat", json={"pid": 1})
                assert answer.status_code == 200
                # The call carried the token that the scheduler side minted, not the worker.
                assert answer.json() == {"ok": True, "authorized": True}
        assert api.calls == {f"/execution/task-instances/{TI}/heartbeat": 6}
    finally:
        for r in reconcilers:
            r.stop()


def test_a_call_from_a_worker_enrolled_a_moment_ago_waits_not_lost(
    seaweed, prefix, api, tmp_path
) -> None:
    """Signed by a key not trusted yet: kept in the inbox, served once the key is enrolled."""
    scheduler, worker, other = (SigningKey.generate() for _ in range(3))
    trusted = tmp_path / "workers"
    trusted.mkdir()
    other.write(trusted / "other.pem")
    config = store_config(seaweed, prefix)
    ring = KeyRing([other.public])
    settings = make_settings(config, scheduler, ring, str(trusted), api.url)
    r = reconciler(config, settings)
    r.start()
    try:
        transport = claimed_job(Mailbox(ObjectStore(config)), scheduler, worker)
        results: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: results.append(
                httpx.Client(base_url=BASE_URL, transport=transport).put(
                    f"task-instances/{TI}/heartbeat", json={"pid": 1}
                )
            )
        )
        call.start()
        inbox = f"{prefix}/v1/inbox/"
        mailbox = Mailbox(ObjectStore(config))

        def parked() -> bool:
            return bool(r.parked) and any(mailbox.store.list_all(inbox))

        deadline = time.monotonic() + 30
        while not parked():
            assert time.monotonic() < deadline, "the request was not parked"
            time.sleep(0.1)
        assert api.calls == {}  # nothing replayed for an unknown key ...
        worker.write(trusted / "w1.pem")  # ... until an operator enrolls the worker
        r.reload_worker_keys()
        call.join(30)
        assert results and results[0].status_code == 200
        assert api.calls == {f"/execution/task-instances/{TI}/heartbeat": 1}
    finally:
        r.stop()


def test_a_dead_reconcilers_lease_is_taken_over(weed_store) -> None:
    """A reconciler that took a request and died does not block it for longer than the lease."""
    mailbox = Mailbox(weed_store)
    job_id, request_id = new_id(), new_id()
    assert mailbox.take_request(job_id, request_id, "scheduler-a", lease=60)
    assert mailbox.take_request(job_id, request_id, "scheduler-a", lease=60)  # still ours
    assert not mailbox.take_request(job_id, request_id, "scheduler-b", lease=60)  # held
    assert mailbox.take_request(job_id, request_id, "scheduler-b", lease=0)  # expired: taken
    assert not mailbox.take_request(job_id, request_id, "scheduler-a", lease=60)  # b holds it


@contextlib.contextmanager
def served_job(seaweed, prefix, api) -> Iterator[RelayTransport]:
    """A claimed job's relay transport, served by one running reconciler."""
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = make_settings(config, scheduler, KeyRing([worker.public]), "", api.url)
    r = reconciler(config, settings)
    r.start()
    try:
        yield claimed_job(Mailbox(ObjectStore(config)), scheduler, worker)
    finally:
        r.stop()


def test_the_worker_polls_for_an_answer_where_it_expects_it(seaweed, prefix, api) -> None:
    """Each poll is a billed GET and CPU on the worker: with the Execution API answering in
    ~0.3 s, a call costs a few polls around that time, not one every 20 ms."""
    with served_job(seaweed, prefix, api) as transport:
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            for _ in range(6):
                assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 200
        assert min(transport.round_trips) >= 0.3  # the API's own pause: a real wait
        assert transport.expected_wait >= 0.2  # learned from the calls
        assert transport.polls <= 6 * 6, transport.polls  # a fixed 20 ms poll: 15 per call
        assert api.calls == {f"/execution/task-instances/{TI}/heartbeat": 6}


def test_the_heartbeat_right_after_run_is_not_relayed(seaweed, prefix, api) -> None:
    """The Task SDK heartbeats at once after /run; the relay answers that one itself (204),
    and every later heartbeat goes to the server, which can answer "stop"."""
    with served_job(seaweed, prefix, api) as transport:
        transport.heartbeat_interval = 60
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            assert client.patch(f"task-instances/{TI}/run", json={}).status_code == 200
            assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 204
            assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 200
        assert api.calls == {
            f"/execution/task-instances/{TI}/run": 1,
            f"/execution/task-instances/{TI}/heartbeat": 1,
        }
        assert transport.heartbeats_skipped == 1


def test_calls_written_behind_reach_the_api_in_order_and_before_the_result(
    seaweed, prefix, api
) -> None:
    """Rendered fields and the terminal state are answered by the worker itself (202) and
    cost it one PUT each (and a ring for the state). Two reconcilers then replay them once
    each, in the order sent, and the job's owner reports its result only after the state
    call was answered."""
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = make_settings(config, scheduler, KeyRing([worker.public]), "", api.url)
    owner, other = reconciler(config, settings), reconciler(config, settings)
    mailbox = Mailbox(ObjectStore(config))
    transport = claimed_job(mailbox, scheduler, worker)
    owner.track(Job(job_id=transport.job_id, ti_id=TI, queue="default"))
    mailbox.store.counter.reset()
    with httpx.Client(base_url=BASE_URL, transport=transport) as client:
        for _ in range(3):  # ids minted within one millisecond still keep their order
            assert client.put(f"task-instances/{TI}/rtif", json={"f": "v"}).status_code == 202
        assert client.patch(f"task-instances/{TI}/state", json={}).status_code == 202
    assert mailbox.store.counter.snapshot() == {
        "PUT": 5,  # the four requests and the terminal state's ring; no answer polls
        "GET": 0,
        "LIST": 0,
        "HEAD": 0,
        "DELETE": 0,
    }
    assert api.calls == {}  # nobody replayed them yet: the worker did not wait
    result = JobResult(
        job_id=transport.job_id,
        worker="w1",
        state=JobState.SUCCESS,
        exit_code=0,
        started_at=time.time(),
        finished_at=time.time(),
    )
    mailbox.put_result(result, worker)
    mailbox.notify(mailbox.layout.inbox_result(transport.job_id))
    for r in (owner, other):
        r.start()
    try:
        assert owner.events.get(timeout=60)[:2] == ("running", transport.job_id)
        assert owner.events.get(timeout=60)[:2] == ("success", transport.job_id)
        rtif, state = (f"/execution/task-instances/{TI}/{p}" for p in ("rtif", "state"))
        assert api.order == [rtif, rtif, rtif, state]  # all answered before the result
        assert api.calls == {rtif: 3, state: 1}
        assert other.events.empty()
        inbox = f"{prefix}/v1/inbox/"
        deadline = time.monotonic() + 30
        while any(mailbox.store.list_all(inbox)):  # handled items are deleted (in batches)
            assert time.monotonic() < deadline, "handled items were left in the inbox"
            time.sleep(0.1)
    finally:
        for r in (owner, other):
            r.stop()


def test_a_call_written_behind_is_retried_on_a_server_error(seaweed, prefix, api) -> None:
    """The worker did not wait for it, so the Task SDK's own retries do not apply: the
    reconciler retries a 5xx itself."""
    api.fail_first = 2
    with (
        served_job(seaweed, prefix, api) as transport,
        httpx.Client(base_url=BASE_URL, transport=transport) as client,
    ):
        assert client.put(f"task-instances/{TI}/rtif", json={}).status_code == 202
        assert client.put(f"task-instances/{TI}/heartbeat", json={}).status_code == 200
    rtif = f"/execution/task-instances/{TI}/rtif"
    assert api.calls[rtif] == 3
    assert api.order == [rtif, f"/execution/task-instances/{TI}/heartbeat"]


def test_a_quiet_reconciler_polls_less_often(seaweed, prefix, api) -> None:
    """Jobs outstanding but nothing changing (long tasks): after QUIET_POLLS polls without a
    change the inbox marker is polled less often, up to five times poll_interval."""
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = make_settings(config, scheduler, KeyRing([worker.public]), "", api.url)
    r = reconciler(config, settings)  # poll_interval 0.02 s: 60 polls would take 1.2 s
    started = time.monotonic()
    r.start()
    try:
        deadline = started + 30
        while r.mailbox.store.counter.snapshot()["GET"] < QUIET_POLLS + 20:
            assert time.monotonic() < deadline, "the reconciler stopped polling"
            time.sleep(0.01)
        # 40 polls at 0.02 s, then 20 backing off to 0.1 s: about 2.6 s
        assert time.monotonic() - started > 2.0
    finally:
        r.stop()
