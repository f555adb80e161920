"""Operating the scheduler side: the ``airflow edge-mailbox`` commands, metrics through
Airflow's statsd, and the cleanup that keeps the bucket from growing with every task."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from demo.stack import BIN, Stack

pytestmark = pytest.mark.e2e
DAG_ID = "edge_demo"


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


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.stop()


@pytest.fixture(scope="module")
def stack(seaweed, statsd, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("ops") / "stack",
        prefix=f"ops-{secrets.token_hex(4)}",
        scheduler_options={"cleanup_success_after": 15, "worker_check_interval": 1},
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


def test_commands_metrics_and_cleanup(stack: Stack, statsd: StatsdListener) -> None:
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

    # Cleanup: 15 s after success, the jobs' protocol objects are gone; their logs stay.
    def jobs_folder_empty() -> bool:
        return not list(client.list_all(f"{stack.prefix}/v1/jobs/"))

    stack.wait_for(jobs_folder_empty, 90, "the cleanup of finished jobs")
    assert not list(client.list_all(f"{stack.prefix}/v1/inbox/"))
    assert not [k for k in client.list_all(f"{stack.prefix}/v1/queues/") if "/jobs/" in k.key]
    logs = [e.key for e in client.list_all(f"{stack.prefix}/v1/logs/")]
    assert len({key.split("/")[-2] for key in logs}) == 4  # one log folder per job, kept
    assert "would delete 0 objects" in airflow_cli(stack, "sweep", "--dry-run", "--older-than", "0")
