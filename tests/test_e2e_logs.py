"""Task logs in the Airflow UI (REST API) from the bucket: while the task runs
(MailboxExecutor.get_task_log) and after it finished (MailboxRemoteLogIO through
``[logging] logging_config_class``), each printed line exactly once, and never a request to a
worker log server on port 8793. Real SeaweedFS, Airflow 3.3, an edge worker."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.stack import MAILBOX_EXECUTOR, Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_logs"
DAG_ID = "edge_logs"
LINES = [f"chatty line {i:02d}" for i in range(15)]  # what tests/dags_logs/edge_logs.py prints
SERVED_LOGS_ERRORS = ("Could not read served logs", ":8793", "Log file not found on worker")


class PortWatch:
    """Listens where Airflow would fetch served logs (port 8793) and counts who came."""

    def __init__(self, port: int = 8793) -> None:
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def port_watch() -> Iterator[PortWatch | None]:
    try:
        watch = PortWatch()
    except OSError:  # 8793 taken on this machine: the log texts below still tell
        yield None
        return
    yield watch
    watch.stop()


@pytest.fixture
def stack(seaweed, tmp_path) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path / "stack",
        executor=f"LocalExecutor,{MAILBOX_EXECUTOR}",  # the RemoteLogIO must leave local logs be
        dags_folder=DAGS,
        prefix=f"logs-{secrets.token_hex(4)}",
    )
    stack.prepare(store=seaweed)
    stack.add_worker("edge-1", EDGE_LOGS_RELEASE=str(release_file(stack)))
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def release_file(stack: Stack) -> Path:
    """Where chatty looks, once its lines are printed, for leave to end: until the test has
    read its log while it runs, it runs, however slow the machine."""
    return stack.root / "release-chatty"


def events(content: list[dict[str, Any]]) -> list[str]:
    return [str(item.get("event", "")) for item in content]


def state_of(stack: Stack, run_id: str, task_id: str) -> str | None:
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(DAG_ID, run_id)}
    return states.get(task_id)


def assert_no_served_logs(text: str) -> None:
    for needle in SERVED_LOGS_ERRORS:
        assert needle not in text, f"the api-server tried a worker log server: {needle!r}"


def test_task_log_from_the_bucket_while_running_and_after(
    stack: Stack, port_watch: PortWatch | None
) -> None:
    stack.wait_for_dag(DAG_ID)
    run_id = stack.trigger(DAG_ID)
    stack.wait_for(
        lambda: state_of(stack, run_id, "chatty") == "running", 120, "chatty to run", every=0.2
    )

    # While it runs: MailboxExecutor.get_task_log answers (a bucket source in the header), so
    # Airflow never asks a log server on the worker.
    running = stack.task_log(DAG_ID, run_id, "chatty")
    assert any("s3://" in e and "/logs/edge_logs/" in e for e in events(running)), running
    assert_no_served_logs("\n".join(events(running)))

    # The first printed lines are in the UI while the task is still RUNNING (the worker
    # ships every 5 s).
    def first_lines_while_running() -> list[str] | None:
        seen = events(stack.task_log(DAG_ID, run_id, "chatty"))
        if state_of(stack, run_id, "chatty") != "running":
            raise AssertionError("chatty ended before its first lines showed")
        return seen if LINES[0] in seen else None

    seen = stack.wait_for(first_lines_while_running, 60, "the first lines while running")
    assert_no_served_logs("\n".join(seen))
    assert seen.count(LINES[0]) == 1
    release_file(stack).touch()

    assert stack.wait_for_run(DAG_ID, run_id, timeout=180) == "success", stack.log_tail(
        "worker-edge-1"
    )

    # After it finished: MailboxRemoteLogIO reads the whole log from the bucket. The task
    # reports success before its worker uploads the end of the log: poll for the last line.
    def whole_log() -> list[str] | None:
        seen = events(stack.task_log(DAG_ID, run_id, "chatty"))
        return seen if LINES[-1] in seen else None

    finished = stack.wait_for(whole_log, 60, "the whole log of chatty")
    printed = [e for e in finished if e.startswith("chatty line")]
    assert printed == LINES, finished  # each line once, in order
    assert any("sealed chunk" in e for e in finished)
    assert_no_served_logs("\n".join(finished))

    # A LocalExecutor task beside it keeps its local log (the RemoteLogIO stays out of it).
    local = events(stack.task_log(DAG_ID, run_id, "stay_home"))
    assert "a line from LocalExecutor" in local, local
    assert not any("s3://" in e for e in local)

    api_log = stack.log_tail("api-server", 100_000)
    assert "Could not read served logs" not in api_log
    if port_watch is not None:
        assert port_watch.connections == 0
