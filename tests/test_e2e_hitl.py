"""Human in the loop, and the two ways a worker starts a job, with real Airflow 3.3,
SeaweedFS and one edge worker.

On Airflow 3.3 an HITL operator does not poll while it waits: it writes its request
(``POST hitlDetails/{ti}``, relayed), parks the task in ``awaiting_input`` (its terminal
state call, written behind) and its process ends. The answer, given through the public REST
API, puts the task back in the queue with the answer in its next_kwargs, and it resumes in
``execute_complete`` on an edge worker, as a deferred task does. So a long wait costs no relay
call and holds no slot; the worker idles and heartbeats meanwhile.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.stack import Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_hitl"
WORKER = "hitl-1"
HEARTBEAT = 2.0  # the worker's heartbeat interval here (s)
POLL_IDLE = 6.0  # its longest pause between queue polls (the default)
WORKER_TIMEOUT = 15  # the scheduler side declares a worker lost after this
WAIT = 45.0  # how long the person takes to answer: three worker timeouts


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("hitl") / "stack",
        dags_folder=DAGS,
        prefix=f"hitl-{secrets.token_hex(4)}",
        scheduler_options={"worker_timeout": WORKER_TIMEOUT, "worker_check_interval": 2},
    )
    stack.prepare(store=seaweed)
    stack.add_worker(WORKER, options={"worker_heartbeat_interval": HEARTBEAT})
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def heartbeat(stack: Stack) -> dict[str, Any]:
    client = stack.bucket_client()
    return stack.signed_body(client, f"{stack.prefix}/v1/workers/{WORKER}.jws")


def ti_of(stack: Stack, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    (ti,) = [t for t in stack.task_instances(dag_id, run_id) if t["task_id"] == task_id]
    return ti


def relayed(stack: Stack, job_ids: list[str]) -> int:
    """Relay calls answered for these jobs: one response object each."""
    client = stack.bucket_client()
    return sum(
        len(list(client.list_all(f"{stack.prefix}/v1/jobs/{job}/responses/"))) for job in job_ids
    )


def jobs_of(stack: Stack, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return [
        c
        for c in stack.claims()
        if c["manifest"]["ti"]["dag_id"] == dag_id and c["manifest"]["ti"]["run_id"] == run_id
    ]


def log_with(stack: Stack, dag_id: str, run_id: str, task_id: str, line: str) -> str:
    """The task's log as the UI shows it, once it holds ``line``: a run's state reaches
    Airflow a moment before the worker uploads the end of its log."""

    def text() -> str:
        log = stack.task_log(dag_id, run_id, task_id)
        return "\n".join(str(m.get("event", m)) for m in log)

    return stack.wait_for(lambda: line in (found := text()) and found, 60, f"{line!r} in the log")


def test_a_person_answers_through_the_rest_api_and_the_task_sees_it(stack: Stack) -> None:
    stack.wait_for_dag("hitl_approval")
    run_id = stack.trigger("hitl_approval")
    stack.wait_for(
        lambda: ti_of(stack, "hitl_approval", run_id, "ask")["state"] == "awaiting_input",
        180,
        "the task to wait for its answer",
    )
    (parked,) = jobs_of(stack, "hitl_approval", run_id)
    detail_path = f"/api/v2/dags/hitl_approval/dagRuns/{run_id}/taskInstances/ask/-1/hitlDetails"
    detail = stack._request("GET", detail_path)
    assert detail["subject"] == "Ship batch 7?" and detail["options"] == ["Ship", "Hold"]
    # The wait: the worker idles and heartbeats; nothing is relayed, nobody is lost.
    calls_before = relayed(stack, [parked["job_id"]])
    before = heartbeat(stack)
    after = stack.wait_for(
        lambda: (beat := heartbeat(stack))["sent_at"] >= before["sent_at"] + WAIT and beat,
        WAIT + 60,
        "the worker's heartbeats through the wait",
    )
    waited = after["sent_at"] - before["sent_at"]
    spent = {k: after["requests"][k] - before["requests"].get(k, 0) for k in after["requests"]}
    calls_during = relayed(stack, [parked["job_id"]]) - calls_before
    print(
        f"\nwaited {waited:.0f} s for the answer: {calls_during} relayed calls, worker requests "
        f"{ {k: v for k, v in spent.items() if v} } (heartbeats every {HEARTBEAT:.0f} s, queue "
        f"polls at most every {POLL_IDLE:.0f} s when idle)"
    )
    assert calls_during == 0  # the operator does not poll on 3.3: the wait costs no call
    assert after["running_jobs"] == [] and after["state"] == "idle"  # no slot held
    # The worker's requests are its idle footprint: a heartbeat PUT each interval and a
    # marker GET per poll, about 40 of them while its pause grows back from 0.1 s to 6 s
    # after the job ended; nothing for the waiting task.
    idle_footprint = waited / HEARTBEAT + waited / POLL_IDLE + 40
    assert sum(spent.values()) <= 2 * idle_footprint, spent
    assert stack.processes[f"worker-{WORKER}"].poll() is None
    ti = ti_of(stack, "hitl_approval", run_id, "ask")
    assert ti["state"] == "awaiting_input" and ti["try_number"] == 1  # not failed as lost
    assert "lost" not in stack.log_tail("scheduler", 2000).lower()

    answer = stack._request(
        "PATCH", detail_path, {"chosen_options": ["Ship"], "params_input": {"note": "line 3 ok"}}
    )
    assert answer["chosen_options"] == ["Ship"]
    assert stack.wait_for_run("hitl_approval", run_id, timeout=180) == "success"
    value = stack.xcom("hitl_approval", run_id, "ask")
    value = json.loads(value) if isinstance(value, str) else value
    assert value["chosen_options"] == ["Ship"] and value["params_input"] == {"note": "line 3 ok"}
    log = log_with(stack, "hitl_approval", run_id, "ask", "answer on the edge: ['Ship']")
    assert "answer on the edge: ['Ship'], note 'line 3 ok'" in log  # the resumed half
    assert "Waiting for response" in log  # the first half, before the wait
    # Both halves ran on the edge worker, as one try: claimed twice.
    claims = jobs_of(stack, "hitl_approval", run_id)
    assert [c["worker"] for c in claims] == [WORKER, WORKER]
    assert {c["manifest"]["ti"]["try_number"] for c in claims} == {1}


def test_a_task_that_asks_for_a_fresh_interpreter_gets_one(stack: Stack) -> None:
    stack.wait_for_dag("fresh_or_forked")
    run_id = stack.trigger("fresh_or_forked")
    assert stack.wait_for_run("fresh_or_forked", run_id, timeout=240) == "success"
    forked = stack.xcom("fresh_or_forked", run_id, "forked")
    fresh = stack.xcom("fresh_or_forked", run_id, "fresh")
    assert forked["preloaded"] is True
    assert "edge_mailbox.worker.fresh_runner" not in forked["runner"]
    assert fresh["preloaded"] is False  # nothing of the worker's preload in it
    assert "edge_mailbox.worker.fresh_runner" in fresh["runner"]
    log = log_with(stack, "fresh_or_forked", run_id, "fresh", "preloaded=False, runner ")
    assert "edge_mailbox.worker.fresh_runner" in log
    manifests = {
        c["manifest"]["ti"]["task_id"]: c["manifest"]
        for c in jobs_of(stack, "fresh_or_forked", run_id)
    }
    assert manifests["fresh"]["fresh_interpreter"] is True
    assert manifests["forked"]["fresh_interpreter"] is False
