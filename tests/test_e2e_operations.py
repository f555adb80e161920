"""Operating the scheduler side: the ``airflow edge-mailbox`` commands, metrics through
Airflow's statsd, and the cleanup that keeps the bucket from growing with every task.

The commands read jobs that the cleanup deletes a moment after they finish, and each command
is an Airflow process start: however slow the machine, the cleanup is held back (by a proxy
between the scheduler side and the bucket) until the reads are done, then let go."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import pytest
from faults import _Handler, _Served

from demo.stack import BIN, Stack

pytestmark = pytest.mark.e2e
DAG_ID = "edge_demo"
PREFIX = f"ops-{secrets.token_hex(4)}"


class StatsdListener:
    """A UDP socket on loopback that keeps every statsd line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.lines: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.lines.extend(data.decode(errors="replace").splitlines())

    def names(self) -> set[str]:
        return {line.split(":", 1)[0] for line in self.lines}

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


class CleanupGate(_Served):
    """A reverse proxy in front of the bucket that holds back the deletion of jobs' objects.

    While held, a batch delete naming a key under ``jobs_prefix`` is answered as S3 answers a
    delete it refuses key by key (200, an <Error> per key): the reconciler keeps those jobs
    and tries again at its next check. Everything else, reads and the inbox's deletions
    included, goes through."""

    def __init__(self, upstream: str, jobs_prefix: str) -> None:
        self.upstream = urlsplit(upstream)
        self.jobs_prefix = jobs_prefix.encode()
        self.held = threading.Event()
        self.held.set()
        self.refused = 0  # batch deletes answered with refusals

    def release(self) -> None:
        self.held.clear()

    def start(self) -> CleanupGate:
        gate, target = self, self.upstream

        class Handler(_Handler):
            def _handle(self) -> None:
                body = self.read_body()
                if gate.held.is_set() and gate.holds(self.command, self.path, body):
                    gate.refused += 1
                    self.reply(200, [("Content-Type", "application/xml")], refusal(body))
                    return
                host, port = target.hostname or "127.0.0.1", target.port or 80
                self.reply(*self.fetch(host, port, self.path, body))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._serve(Handler)
        return self

    def holds(self, method: str, path: str, body: bytes) -> bool:
        query = urlsplit(path).query.split("&")
        return method == "POST" and "delete" in query and self.jobs_prefix in body


def refusal(request: bytes) -> bytes:
    """DeleteObjects' answer when every key was refused."""
    tags = ElementTree.fromstring(request).iter()
    keys = [e.text or "" for e in tags if e.tag.rsplit("}", 1)[-1] == "Key"]  # any namespace
    errors = "".join(
        f"<Error><Key>{escape(k)}</Key><Code>AccessDenied</Code>"
        "<Message>held back by the test</Message></Error>"
        for k in keys
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{errors}</DeleteResult>'
    ).encode()


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.stop()


@pytest.fixture(scope="module")
def gate(seaweed) -> Iterator[CleanupGate]:
    gate = CleanupGate(seaweed.endpoint_url, f"{PREFIX}/v1/jobs/").start()
    yield gate
    gate.stop()


@pytest.fixture(scope="module")
def stack(seaweed, statsd, gate, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("ops") / "stack",
        prefix=PREFIX,
        scheduler_options={
            # Due a second after each success, so that the cleanup always meets the gate.
            "cleanup_success_after": 1,
            "worker_check_interval": 1,
            "endpoint_url": gate.url,  # the scheduler side only; workers reach the bucket
        },
        airflow_options={
            "metrics": {
                "statsd_on": "True",
                "statsd_host": "127.0.0.1",
                "statsd_port": statsd.port,
                "statsd_prefix": "airflow",
            }
        },
    )
    stack.prepare(store=seaweed)
    stack.add_worker("edge-1", concurrency=4, options={"worker_heartbeat_interval": 2})
    stack.start_airflow()
    stack.add_connection("edge_demo_db", conn_type="postgres", login="x", password="y")
    yield stack
    stack.stop(keep_store=True)


def airflow_cli(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "airflow"), "edge-mailbox", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_commands_metrics_and_cleanup(
    stack: Stack, statsd: StatsdListener, gate: CleanupGate
) -> None:
    stack.wait_for_dag(DAG_ID)
    run_id = stack.trigger(DAG_ID)
    assert stack.wait_for_run(DAG_ID, run_id, timeout=240) == "success"
    client = stack.bucket_client()
    stack.wait_for(lambda: stack.all_results_in(client), 60, "results")

    workers = json.loads(airflow_cli(stack, "workers", "-o", "json"))
    assert [(w["worker"], w["queues"], w["slots"].split("/")[1]) for w in workers] == [
        ("edge-1", "default", "4")
    ]
    assert workers[0]["state"] in ("idle", "running") and workers[0]["last_heartbeat_age"] < 30

    jobs = json.loads(airflow_cli(stack, "jobs", "-o", "json", "--since", "600"))
    assert sorted(j["task"].split(".")[1].split()[0] for j in jobs) == [
        "consume",
        "hello_bash",
        "produce",
        "read_connection",
    ]
    assert {j["state"] for j in jobs} == {"success"} and {j["worker"] for j in jobs} == {"edge-1"}

    queues = json.loads(airflow_cli(stack, "queues", "-o", "json"))
    assert [(q["queue"], q["pending"]) for q in queues] == [("default", 0)]

    # Metrics, through Airflow's own statsd client.
    def metrics_seen() -> bool:
        names = statsd.names()
        return {
            "airflow.edge_mailbox.claim_latency",
            "airflow.edge_mailbox.relay_latency",
            "airflow.edge_mailbox.live_workers",
        } <= names

    stack.wait_for(metrics_seen, 30, "edge_mailbox metrics")

    # Cleanup: the reads are done; the cleanup came due and was held back until now. Let go,
    # the jobs' protocol objects go (a refused deletion is tried again) but for each claim,
    # the job's tombstone until its manifest expires (in an hour); their logs stay.
    stack.wait_for(lambda: gate.refused > 0, 60, "the cleanup to come due")
    gate.release()

    def only_tombstones() -> bool:
        keys = [e.key for e in client.list_all(f"{stack.prefix}/v1/jobs/")]
        return len(keys) == 4 and all(key.endswith("/claim.jws") for key in keys)

    stack.wait_for(only_tombstones, 90, "the cleanup of finished jobs")
    assert not list(client.list_all(f"{stack.prefix}/v1/inbox/"))
    assert not [k for k in client.list_all(f"{stack.prefix}/v1/queues/") if "/jobs/" in k.key]
    logs = [e.key for e in client.list_all(f"{stack.prefix}/v1/logs/")]
    assert len({key.split("/")[-2] for key in logs}) == 4  # one log folder per job, kept
    assert "would delete 0 objects" in airflow_cli(stack, "sweep", "--dry-run", "--older-than", "0")
