"""A connection test through the bucket: its manifest names the test and nothing secret, and
the relay lets its job make exactly the two calls of Airflow's connection-test supervisor,
for its own test, with a workload token; no other test, no connection by name, no task route.

The Execution API is a small recording HTTP server on loopback; the bucket is SeaweedFS; the
worker side is the real RelayTransport inside an httpx client, as the Task SDK uses it."""

from __future__ import annotations

import http.server
import json
import queue
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import test_relay_two_reconcilers as two
from airflow.executors import workloads
from airflow.models.connection_test import ConnectionTestKey
from conftest import store_config

from edge_mailbox.executor.mailbox_executor import MailboxExecutor
from edge_mailbox.executor.reconciler import Reconciler
from edge_mailbox.mailbox.errors import NotFound
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import Claim, ConnectionTest, JobManifest
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.mailbox.routes import allowed, allowed_for_connection_test
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SealKey, SigningKey
from edge_mailbox.worker.transport import BASE_URL, RelayTransport

CT = "0190c0de-0000-7000-8000-00000000c0de"
OTHER = "0190c0de-0000-7000-8000-0000000000ff"


class RecordingApi:
    """Answers every call 200 with a connection; records (method, path, authorization)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.calls.append((self.command, self.path, self.headers.get("authorization")))
                body = json.dumps({"conn_id": "plant_db", "conn_type": "smtp"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PATCH = do_GET

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/execution/"


@pytest.fixture
def api() -> Iterator[RecordingApi]:
    server = RecordingApi()
    yield server
    server.server.shutdown()


def claimed_connection_test(
    mailbox: Mailbox, scheduler: SigningKey, worker: SigningKey
) -> RelayTransport:
    """A connection test's manifest, the worker's claim of it, and its relay transport."""
    job_id = new_id()
    manifest = JobManifest(
        job_id=job_id,
        queue="plant",
        enqueued_at=time.time(),
        connection_test=ConnectionTest(id=CT, connection_id="plant_db", timeout=30),
        seal_key=SealKey.derive(scheduler.seed(), job_id).public,
        scheduler_version="0.1.0",
    )
    key = mailbox.put_manifest(manifest, scheduler, ttl=600)
    seal_key = SealKey.generate()
    mailbox.create_claim(
        Claim(
            job_id=job_id,
            queue="plant",
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


def test_the_relay_serves_a_connection_test_its_own_two_calls_only(seaweed, prefix, api) -> None:
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = two.make_settings(config, scheduler, KeyRing([worker.public]), "", api.url)
    reconciler = two.reconciler(config, settings)
    reconciler.start()
    try:
        transport = claimed_connection_test(Mailbox(ObjectStore(config)), scheduler, worker)
        with httpx.Client(base_url=BASE_URL, transport=transport) as client:
            refused = [
                client.get(f"connection-tests/{OTHER}/connection"),  # another test's secrets
                client.patch(f"connection-tests/{OTHER}", json={"state": "success"}),
                client.get("connections/plant_db"),  # a task may; a connection test may not
                client.get("connections/another_db"),
                client.get(f"connection-tests/{CT}/connection", params={"x": "1"}),
                client.patch(f"task-instances/{CT}/run", json={}),
                client.get("variables/secret"),
            ]
            fetched = client.get(f"connection-tests/{CT}/connection")
            reported = client.patch(f"connection-tests/{CT}", json={"state": "success"})
        assert [r.status_code for r in refused] == [403] * len(refused)
        assert fetched.status_code == 200 and fetched.json()["conn_id"] == "plant_db"
        assert reported.status_code == 200
        # Only the two calls reached Airflow, each with a workload token minted for the test
        # (Airflow's connection-test routes take no other).
        assert api.calls == [
            ("GET", f"/execution/connection-tests/{CT}/connection", "Bearer workload-token"),
            ("PATCH", f"/execution/connection-tests/{CT}", "Bearer workload-token"),
        ]
    finally:
        reconciler.stop()


@pytest.mark.parametrize(
    ("method", "path", "query", "ok"),
    [
        ("GET", f"connection-tests/{CT}/connection", "", True),
        ("PATCH", f"connection-tests/{CT}", "", True),
        ("GET", f"connection-tests/{OTHER}/connection", "", False),
        ("PATCH", f"connection-tests/{OTHER}", "", False),
        ("PATCH", f"connection-tests/{CT}/connection", "", False),
        ("DELETE", f"connection-tests/{CT}", "", False),
        ("GET", f"connection-tests/{CT}/connection", "a=b", False),
        ("GET", "connections/plant_db", "", False),
        ("GET", f"connection-tests/{CT}/../{OTHER}/connection", "", False),
    ],
)
def test_a_connection_tests_allowlist(method: str, path: str, query: str, ok: bool) -> None:
    assert allowed_for_connection_test(method, path, CT, query) is ok


def test_a_task_may_not_call_the_connection_test_routes() -> None:
    """Not even with its own id in the place of the test's."""
    assert not allowed("GET", f"connection-tests/{CT}/connection", CT)
    assert not allowed("PATCH", f"connection-tests/{CT}", CT)


@pytest.mark.parametrize(("queue", "expected"), [("plant", "plant"), (None, "default")])
def test_a_test_connection_workload_becomes_a_manifest_on_its_queue(
    mem_store, queue: str | None, expected: str
) -> None:
    """The test's id, connection id and timeout; no task, DAG file, token or connection."""
    scheduler = SigningKey.generate()
    executor = MailboxExecutor()
    executor.settings = two.make_settings(mem_store.config, scheduler, KeyRing([]), "", "")
    executor.mailbox = Mailbox(mem_store)
    workload = workloads.TestConnection(
        connection_test_id=uuid.UUID(CT),
        connection_id="plant_db",
        timeout=45,
        queue=queue,
        token="the-workload-token",
    )
    job = executor._enqueue(workload)
    manifest = executor.mailbox.verify_manifest(
        mem_store.get(job.manifest_key).body, expected, job.job_id, KeyRing([scheduler.public])
    ).model
    assert manifest.connection_test == ConnectionTest(id=CT, connection_id="plant_db", timeout=45)
    assert (manifest.queue, manifest.ti, manifest.callback) == (expected, {}, None)
    assert manifest.subject_id == CT
    assert job.ti_key == ConnectionTestKey(id=CT) and job.connection_test
    assert "the-workload-token" not in mem_store.get(job.manifest_key).body.decode()


def test_a_connection_test_manifest_carries_nothing_else() -> None:
    fields = {
        "job_id": new_id(),
        "queue": "q",
        "enqueued_at": time.time(),
        "seal_key": SealKey.generate().public,
        "scheduler_version": "0.1.0",
        "connection_test": ConnectionTest(id=CT, connection_id="c", timeout=5),
    }
    with pytest.raises(ValueError, match="without ti or callback"):
        JobManifest(**fields, ti={"id": CT})
    del fields["connection_test"]
    with pytest.raises(ValueError, match="dag_rel_path is required"):
        JobManifest(**fields, ti={"id": CT})


def test_the_reaper_withdraws_a_connection_tests_job(mem_store) -> None:
    """Airflow's bookkeeping: a queued test is running once its manifest is written, and the
    scheduler's reaper (``fail_connection_test``) frees its slot; the job is revoked too, so
    no worker starts it late and its relay calls are refused."""
    scheduler = SigningKey.generate()
    executor = MailboxExecutor()
    executor.settings = two.make_settings(mem_store.config, scheduler, KeyRing([]), "", "")
    executor.mailbox = Mailbox(mem_store)
    executor.reconciler = Reconciler(executor.mailbox, executor.settings, str, queue.Queue())
    executor._writer = ThreadPoolExecutor(1)
    workload = workloads.TestConnection(
        connection_test_id=uuid.UUID(CT), connection_id="plant_db", timeout=45, token=""
    )
    key = ConnectionTestKey(id=CT)
    try:
        executor.queue_workload(workload, session=None)
        executor.trigger_connection_tests()
        assert key in executor.running and not executor.queued_connection_tests
        (job,) = executor.reconciler.jobs.live_jobs_of(key)
        assert mem_store.head(job.manifest_key)

        executor.fail_connection_test(key)
        assert key not in executor.running and executor.slots_occupied == 0
        assert executor.mailbox.revoked(job.job_id, KeyRing([scheduler.public]))
        with pytest.raises(NotFound):
            mem_store.head(job.manifest_key)
    finally:
        executor._writer.shutdown()
