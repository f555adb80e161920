"""One size limit for relayed calls: a call too large to sign is answered at once (413, naming
the limit and the size) instead of after the worker's long wait, an answer too large is
refused the same way, and a reader refuses an oversized object without downloading it."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socketserver
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from edge_mailbox.executor.relay import ExecutionApi
from edge_mailbox.mailbox.config import RetryPolicy, StoreConfig
from edge_mailbox.mailbox.errors import ProtocolError
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import ALL_KINDS, RelayAnswer, RelayCall
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.relaycodec import decode_body, encode_body, open_call, seal_call
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SealKey, SigningKey
from edge_mailbox.signer.envelope import MAX_TOKEN_BYTES
from edge_mailbox.worker.transport import BASE_URL, RelayTransport

MiB = 1024 * 1024


def test_no_kind_in_the_bucket_may_be_larger_than_what_verify_accepts() -> None:
    # A reader GETs at most twice a kind's MAX_BYTES (base64 and the envelope); verify refuses
    # anything over MAX_TOKEN_BYTES: the two must agree, or an object is fetched, then refused.
    # (A RelayCall or RelayAnswer is never an object: it travels sealed inside one.)
    for kind in ALL_KINDS:
        if kind not in (RelayCall, RelayAnswer):
            assert 2 * kind.MAX_BYTES <= MAX_TOKEN_BYTES, kind.KIND


def test_the_largest_relayable_body_fits_one_signed_request(moto_store: ObjectStore) -> None:
    from edge_mailbox.mailbox.models import MAX_RELAY_BODY

    mailbox, worker, scheduler = Mailbox(moto_store), SigningKey.generate(), SigningKey.generate()
    job_id, request_id = new_id(), new_id()
    seal_key = SealKey.derive(scheduler.seed(), job_id)
    call = RelayCall(
        method="POST",
        path="x" * 8192,
        query="q" * 8192,
        headers={"content-type": "application/json", "user-agent": "u" * 200},
        body=encode_body(os.urandom(MAX_RELAY_BODY)),
    )
    context = mailbox.seal_context(job_id, request_id, "request")
    sealed = seal_call(call, seal_key.public, context, job_id, request_id)
    mailbox.put_request(sealed, worker)
    read = mailbox.read_request(job_id, request_id, KeyRing([worker.public]))
    assert open_call(read.model, seal_key, context) == call


@pytest.fixture
def transport(moto_store: ObjectStore) -> RelayTransport:
    mailbox, scheduler = Mailbox(moto_store), SigningKey.generate()
    job_id = new_id()
    return RelayTransport(
        mailbox,
        job_id,
        worker_key=SigningKey.generate(),
        seal_key=SealKey.generate(),
        scheduler_seal_key=SealKey.derive(scheduler.seed(), job_id).public,
        scheduler_keys=KeyRing([scheduler.public]),
        deadline=3,  # the worker's real one is 900 s: an upload would wait that long
    )


def test_a_call_too_large_to_relay_is_answered_at_once(transport: RelayTransport) -> None:
    body = b"x" * (3 * MiB)  # an XCom of 3 MiB
    with httpx.Client(transport=transport, base_url=BASE_URL) as client:
        started = time.monotonic()
        response = client.post("xcoms/d/r/t/return_value", content=body)
        elapsed = time.monotonic() - started
    assert response.status_code == 413
    message = response.json()["detail"]["message"]
    assert str(len(body)) in message and "limit" in message
    from edge_mailbox.mailbox.models import MAX_RELAY_BODY

    assert str(MAX_RELAY_BODY) in message
    assert elapsed < 1.0
    inbox = transport.mailbox.store.list_all(transport.mailbox.layout.inbox)
    assert not list(inbox), "nothing was uploaded"


class _BigAnswerApi:
    """An Execution API whose every answer is ``size`` bytes."""

    def __init__(self, size: int) -> None:
        body = b'"' + b"x" * (size - 2) + b'"'

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the relay hung up at its limit
                    self.wfile.write(body)

        self.server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/execution/"


def test_an_answer_too_large_to_relay_becomes_a_clear_error() -> None:
    api = _BigAnswerApi(3 * MiB)
    execution = ExecutionApi(api.url, timeout=10)
    try:
        call = RelayCall(method="GET", path="xcoms/d/r/t/return_value")
        answer = execution.replay(call, "token").answer
    finally:
        execution.close()
        api.server.shutdown()
        api.server.server_close()
    assert answer.status == 413
    message = json.loads(decode_body(answer.body))["detail"]["message"]
    assert str(3 * MiB) in message and "limit" in message


class _FakeS3:
    """Answers every GET with a ``size``-byte object, counting the bytes it got to send."""

    def __init__(self, size: int) -> None:
        self.sent = 0
        self.done = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/jose")
                self.send_header("Content-Length", str(size))
                self.send_header("ETag", '"e"')
                self.end_headers()
                chunk = b"A" * (256 * 1024)
                try:
                    while fake.sent < size:
                        self.wfile.write(chunk[: size - fake.sent])
                        fake.sent += min(len(chunk), size - fake.sent)
                except OSError:
                    pass  # the reader hung up
                finally:
                    fake.done.set()
                    self.close_connection = True

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake_s3() -> Iterator[_FakeS3]:
    server = _FakeS3(64 * MiB)
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.mark.parametrize("read", ["read_request", "read_response"])
def test_an_oversized_relay_object_is_refused_without_downloading_it(
    fake_s3: _FakeS3, read: str
) -> None:
    config = StoreConfig(
        bucket="edge-mailbox",
        endpoint_url=fake_s3.url,
        region="us-east-1",
        access_key_id="k",
        secret_access_key="s",
        addressing_style="path",
        retry=RetryPolicy(attempts=1, initial_backoff=0.01, max_backoff=0.01, deadline=5),
    )
    mailbox = Mailbox(ObjectStore(config))
    with pytest.raises(ProtocolError, match=f"limit is {MAX_TOKEN_BYTES}"):
        getattr(mailbox, read)(new_id(), new_id(), KeyRing())
    assert fake_s3.done.wait(10)
    # What the sockets' buffers took before the reader hung up, not the object's 64 MiB.
    assert fake_s3.sent < 24 * MiB
