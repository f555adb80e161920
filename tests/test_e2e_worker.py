"""The worker in production, with real Airflow and SeaweedFS: slots, queues, a worker killed
mid-task, maintenance, a task marked failed while it runs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from demo.stack import BIN, Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_worker"
FAST = {"worker_heartbeat_interval": 2}


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("worker") / "stack",
        dags_folder=DAGS,
        prefix=f"worker-{secrets.token_hex(4)}",
        scheduler_options={"worker_timeout": 15, "worker_check_interval": 2},
    )
    stack.prepare(store=seaweed)
    stack.add_worker("slots-1", queues="slots", concurrency=3, options=FAST)
    stack.add_worker("alpha-1", queues="alpha", concurrency=2, options=FAST)
    stack.add_worker("beta-1", queues="beta", concurrency=2, options=FAST)
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def claims_by_task(stack: Stack) -> dict[str, list[str]]:
    """task_id -> workers that claimed it, read from the bucket."""
    out: dict[str, list[str]] = {}
    for claim in stack.claims():
        out.setdefault(claim["manifest"]["ti"]["task_id"], []).append(claim["worker"])
    return out


def run(stack: Stack, dag_id: str, timeout: float = 240) -> tuple[str, str]:
    stack.wait_for_dag(dag_id)
    run_id = stack.trigger(dag_id)
    return run_id, stack.wait_for_run(dag_id, run_id, timeout=timeout)


def test_slot_arithmetic(stack: Stack) -> None:
    """Concurrency 3: a running 2-slot task leaves room for one 1-slot task only."""
    run_id, state = run(stack, "slots")
    assert state == "success"
    tis = {ti["task_id"]: ti for ti in stack.task_instances("slots", run_id)}
    spans = {
        name: (datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"]))
        for name, ti in tis.items()
    }
    slots = {"two_slots": 2, "one_slot_a": 1, "one_slot_b": 1}
    # At every start, the slots in use (tasks whose span covers that instant) stay <= 3.
    for name, (start, _) in spans.items():
        in_use = sum(slots[o] for o, (s, e) in spans.items() if s <= start < e)
        assert in_use <= 3, (name, spans)
    # And all three did not run at once: someone waited for a slot.
    assert not all(max(s for s, _ in spans.values()) < e for _, e in spans.values()), spans


def test_task_too_big_for_every_worker_is_failed_with_a_reason(stack: Stack) -> None:
    _, state = run(stack, "too_big", timeout=120)
    assert state == "failed"
    log = stack.log_tail("scheduler", 5000)
    assert "needs pool_slots=4, but the live edge workers of queue 'slots' have at most 3" in log
    assert "four_slots" not in claims_by_task(stack)


def test_two_workers_on_different_queues(stack: Stack) -> None:
    _, state = run(stack, "two_queues")
    assert state == "success"
    claims = claims_by_task(stack)
    assert claims["on_alpha"] == ["alpha-1"] and claims["on_beta"] == ["beta-1"]


def test_heartbeats_show_each_worker(stack: Stack) -> None:
    client = stack.bucket_client()
    names = {e.key.rsplit("/", 1)[-1] for e in client.list_all(f"{stack.prefix}/v1/workers/")}
    assert {"slots-1.jws", "alpha-1.jws", "beta-1.jws"} <= names
    status = json.loads(stack.worker_cli("alpha-1", "status").stdout)
    assert status["worker"] == "alpha-1" and status["queues"] == ["alpha"]
    assert status["state"] in ("idle", "running") and status["concurrency"] == 2


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and everything it started, as a power cut would."""
    parent = psutil.Process(pid)
    for proc in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def release(stack: Stack, name: str) -> dict[str, str]:
    """The environment that lets a worker's held_nap end once ``release_file`` exists."""
    return {"EDGE_TEST_RELEASE": str(release_file(stack, name))}


def release_file(stack: Stack, name: str) -> Path:
    return stack.root / f"release-{name}"


def test_worker_killed_mid_task_is_retried_elsewhere(stack: Stack) -> None:
    held = release(stack, "killed")
    first = stack.add_worker("naps-1", queues="naps", concurrency=1, options=FAST, **held)
    stack.wait_for_dag("held_nap")
    run_id = stack.trigger("held_nap")
    log_path = stack.log_files["worker-naps-1"]
    stack.wait_for(lambda: "claimed job" in log_path.read_text(), 120, "the first claim")
    second = stack.add_worker("naps-2", queues="naps", concurrency=1, options=FAST, **held)
    kill_tree(first.pid)  # the nap is held: it is running, however slow the machine
    killed_at = time.monotonic()
    release_file(stack, "killed").touch()  # the second try may end
    state = stack.wait_for_run("held_nap", run_id, timeout=180)
    assert state == "success", stack.log_tail("scheduler")
    (ti,) = stack.task_instances("held_nap", run_id)
    assert ti["try_number"] == 2
    assert [c["worker"] for c in stack.claims() if c["manifest"]["ti"]["dag_id"] == "held_nap"] == [
        "naps-1",
        "naps-2",
    ]
    # Detected within the worker timeout (15 s) plus the check interval, and rerun.
    assert time.monotonic() - killed_at < 15 + 2 + 50
    os.kill(second.pid, signal.SIGTERM)


def test_maintenance_drains_then_resumes(stack: Stack) -> None:
    stack.wait_for_dag("held_nap")
    stack.wait_for_dag("long_nap")
    worker = stack.add_worker(
        "naps-3", queues="naps", concurrency=1, options=FAST, **release(stack, "maintenance")
    )
    run_id = stack.trigger("held_nap")
    log_path = stack.log_files["worker-naps-3"]
    stack.wait_for(lambda: "claimed job" in log_path.read_text(), 120, "a claim")
    command = ["maintenance", "on", "--comment", "disk swap", "--wait", "--timeout", "300"]
    waiting = subprocess.Popen(  # while the held nap runs
        [str(BIN / "edge-mailbox-worker"), *command],
        env=stack.env(stack.worker_home("naps-3")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def draining() -> bool:
        status = json.loads(stack.worker_cli("naps-3", "status").stdout)
        return status["state"] == "maintenance pending" and len(status["running_jobs"]) == 1

    try:
        stack.wait_for(draining, 60, "the worker to drain")
        assert waiting.poll() is None  # --wait waits for the running task ...
        release_file(stack, "maintenance").touch()
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0 and "worker is in maintenance" in out, err
    # ... and returned once the task was done on the worker: its result is in the bucket (its
    # end reaches Airflow through the scheduler a moment later).
    (job_id,) = [c["job_id"] for c in stack.claims() if c["manifest"]["ti"]["run_id"] == run_id]
    client = stack.bucket_client()
    (result_key,) = [e.key for e in client.list_all(f"{stack.prefix}/v1/jobs/{job_id}/results/")]
    assert stack.signed_body(client, result_key)["state"] == "success"
    assert stack.wait_for_run("held_nap", run_id, timeout=60) == "success"
    status = json.loads(stack.worker_cli("naps-3", "status").stdout)
    assert status["state"] == "maintenance" and status["maintenance_comment"] == "disk swap"
    # In maintenance it takes nothing new ...
    second = stack.trigger("long_nap")
    time.sleep(0)
    stack.wait_for(lambda: len(claims_by_task(stack).get("nap", [])) >= 1, 10, "claims readable")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert stack.run_state("long_nap", second) in ("queued", "running")
        assert json.loads(stack.worker_cli("naps-3", "status").stdout)["running_jobs"] == []
        time.sleep(1)
    # ... and after maintenance off it does.
    assert stack.worker_cli("naps-3", "maintenance", "off", "--wait").returncode == 0
    assert stack.wait_for_run("long_nap", second, timeout=120) == "success"
    stop = stack.worker_cli("naps-3", "stop", "--wait", "--timeout", "60")
    assert stop.returncode == 0 and worker.wait(30) == 0


def test_task_marked_failed_in_the_ui_is_killed_on_the_worker(stack: Stack) -> None:
    stack.wait_for_dag("doomed_nap")
    stack.add_worker("naps-4", queues="naps", concurrency=1, options=FAST)
    run_id = stack.trigger("doomed_nap")
    log_path = stack.log_files["worker-naps-4"]
    stack.wait_for(lambda: "claimed job" in log_path.read_text(), 120, "the claim")
    stack.wait_for(
        lambda: (stack.task_instances("doomed_nap", run_id) or [{}])[0].get("state") == "running",
        60,
        "the task to run",
    )
    marked = time.monotonic()
    stack._request(
        "PATCH",
        f"/api/v2/dags/doomed_nap/dagRuns/{run_id}/taskInstances/nap",
        {"new_state": "failed"},
    )
    stack.wait_for(lambda: "exited with" in log_path.read_text(), 120, "the task to be killed")
    assert time.monotonic() - marked < 300  # killed: the nap alone lasts 300 s
    assert stack.run_state("doomed_nap", run_id) == "failed"


def test_stop_kills_what_outlives_the_drain_timeout(stack: Stack) -> None:
    """SIGTERM: the worker stops claiming and waits for its task, but only for its drain
    timeout; then the task is killed, reported failed with the reason, and the worker exits
    leaving no process behind."""
    worker = stack.add_worker(
        "drain-1", queues="drain", concurrency=1, options={**FAST, "worker_drain_timeout": 5}
    )
    stack.wait_for_dag("drain_nap")
    run_id = stack.trigger("drain_nap")
    stack.wait_for(
        lambda: (stack.task_instances("drain_nap", run_id) or [{}])[0].get("state") == "running",
        120,
        "the task to run",
    )
    tree = psutil.Process(worker.pid).children(recursive=True)
    assert tree, "the job's processes"
    stopped = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(60) == 0
    # the drain timeout (5 s) and the kill's grace, not the task's 300 s nap
    assert time.monotonic() - stopped < 40
    deadline = time.monotonic() + 20
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree):
        assert time.monotonic() < deadline, "a job process outlived the worker"
        time.sleep(0.2)
    assert stack.wait_for_run("drain_nap", run_id, timeout=120) == "failed"
    client = stack.bucket_client()
    (job_id,) = [c["job_id"] for c in stack.claims() if c["worker"] == "drain-1"]
    (result_key,) = [e.key for e in client.list_all(f"{stack.prefix}/v1/jobs/{job_id}/results/")]
    result = stack.signed_body(client, result_key)
    assert result["state"] == "failed"
    assert "drain timeout" in result["message"], result
