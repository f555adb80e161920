"""A worker killed while its task runs, with real Airflow and SeaweedFS, in the two ways a
worker dies: only its main process (kill -9, the OOM killer, a crashed interpreter) or its
whole process tree (a host crash). Either way no process of the dead worker relays on, the
try is failed once the worker is seen lost, Airflow retries it on another worker, and the log
of the try that succeeded has every numbered line once and in order."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from demo.stack import Stack
from edge_mailbox.worker.runners import GRACE_SECONDS

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_kill"
LINES = [f"count line {i:02d}" for i in range(30)]  # what tests/dags_kill/kill_dags.py prints
FAST = {"worker_heartbeat_interval": 2}
WORKER_TIMEOUT = 10
DAG_IDS = ("kill_main", "kill_tree")


def queue_of(dag_id: str) -> str:
    return dag_id.replace("_", "-")


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("kill") / "stack",
        dags_folder=DAGS,
        prefix=f"kill-{secrets.token_hex(4)}",
        scheduler_options={"worker_timeout": WORKER_TIMEOUT, "worker_check_interval": 2},
    )
    try:
        stack.prepare(store=seaweed)
        for dag_id in DAG_IDS:  # the scheduler starts only with an enrolled worker key
            stack.add_worker(
                f"{queue_of(dag_id)}-1", queues=queue_of(dag_id), concurrency=1, options=FAST
            )
        stack.start_airflow()
        yield stack
    finally:
        stack.stop(keep_store=True)


def kill_main_process(pid: int) -> None:
    """SIGKILL the worker's main process only, as the OOM killer would."""
    os.kill(pid, signal.SIGKILL)


def kill_tree(pid: int) -> None:
    """SIGKILL the worker and everything it started at once, as a host crash would."""
    parent = psutil.Process(pid)
    for proc in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def printed(stack: Stack, dag_id: str, run_id: str, try_number: int) -> list[str]:
    """The numbered lines in a try's log as the UI shows it (none before the try exists)."""
    try:
        content = stack.task_log(dag_id, run_id, "count", try_number=try_number)
    except urllib.error.HTTPError:
        return []
    events = [str(item.get("event", "")) for item in content]
    return [e for e in events if e.startswith("count line")]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def claimants(stack: Stack, dag_id: str) -> list[str]:
    claims = [c for c in stack.claims() if c["manifest"]["ti"]["dag_id"] == dag_id]
    return [c["worker"] for c in sorted(claims, key=lambda c: c["manifest"]["ti"]["try_number"])]


@pytest.mark.parametrize(
    ("dag_id", "kill"),
    list(zip(DAG_IDS, (kill_main_process, kill_tree), strict=True)),
    ids=["main-process", "whole-tree"],
)
def test_a_killed_worker_leaves_nothing_and_its_task_is_retried_elsewhere(
    stack: Stack, dag_id: str, kill: Callable[[int], None]
) -> None:
    queue = queue_of(dag_id)
    first = stack.processes[f"worker-{queue}-1"]
    stack.wait_for_dag(dag_id)
    run_id = stack.trigger(dag_id)
    stack.wait_for(
        lambda: LINES[3] in printed(stack, dag_id, run_id, 1), 180, "try 1's first lines"
    )
    tree = psutil.Process(first.pid).children(recursive=True)
    assert len(tree) >= 2, tree  # the job's runner (its Task SDK supervisor) and the task

    kill(first.pid)
    killed_at = time.monotonic()
    assert first.wait(10) == -signal.SIGKILL
    # Nothing of the dead worker goes on: the runner ends its whole job at once (SIGTERM,
    # SIGKILL after the grace), long before the worker is seen lost and try 2 could start.
    stack.wait_for(lambda: not alive(tree), GRACE_SECONDS + 10, "the dead worker's job to end")
    assert time.monotonic() - killed_at < WORKER_TIMEOUT, "an orphan outlived the grace"

    second = stack.add_worker(f"{queue}-2", queues=queue, concurrency=1, options=FAST)
    assert stack.wait_for_run(dag_id, run_id, timeout=180) == "success", stack.log_tail("scheduler")
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/count/tries"
    tries = sorted(stack._request("GET", path)["task_instances"], key=lambda t: t["try_number"])
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]
    assert claimants(stack, dag_id) == [f"{queue}-1", f"{queue}-2"]

    # The try that succeeded: every line once, in order. Its worker ships the end of the log
    # after the task reported success: poll for the last line.
    whole = stack.wait_for(
        lambda: (lines := printed(stack, dag_id, run_id, 2)) and LINES[-1] in lines and lines,
        60,
        "the whole log of try 2",
    )
    assert whole == LINES
    # The failed try's log stops where its worker died, and nothing in it is out of order.
    partial = printed(stack, dag_id, run_id, 1)
    assert partial == LINES[: len(partial)] and len(partial) < len(LINES), partial

    os.kill(second.pid, signal.SIGTERM)
    assert second.wait(60) == 0
