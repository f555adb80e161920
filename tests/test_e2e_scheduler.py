"""The scheduler side in production: a scheduler crash mid-run (adoption), and tasks revoked
after waiting too long in a queue."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.stack import Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_sched"


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("sched") / "stack",
        dags_folder=DAGS,
        prefix=f"sched-{secrets.token_hex(4)}",
        # The tests count claims and results in the bucket after the runs, however long those
        # took: nothing is cleaned up meanwhile (the default is 300 s after a success).
        scheduler_options={"cleanup_success_after": 86400},
        airflow_options={
            "scheduler": {
                "orphaned_tasks_check_interval": 5,
                "scheduler_health_check_threshold": 10,
                "task_queued_timeout": 45,
                "task_queued_timeout_check_interval": 3,
            }
        },
    )
    stack.prepare(store=seaweed)
    stack.add_worker("edge-1", concurrency=8)
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def claims(stack: Stack) -> list[tuple[str, str]]:
    """(task_id, job_id) of every claim in the bucket."""
    return [(c["manifest"]["ti"]["task_id"], c["job_id"]) for c in stack.claims()]


def successful_runs(stack: Stack) -> Counter[str]:
    """task_id -> jobs whose task process ran to success, from the workers' results."""
    client = stack.bucket_client()
    by_job = {job: task for task, job in claims(stack)}
    done: Counter[str] = Counter()
    for entry in client.list_all(f"{stack.prefix}/v1/jobs/"):
        if "/results/" in entry.key:
            result = stack.signed_body(client, entry.key)
            if result["state"] == "success":
                done[by_job[result["job_id"]]] += 1
    return done


def test_scheduler_crash_mid_run_adopts_and_runs_each_task_once(stack: Stack) -> None:
    stack.wait_for_dag("fanout_20")
    run_id = stack.trigger("fanout_20")

    def some_done() -> bool:
        tis = stack.task_instances("fanout_20", run_id)
        return sum(ti["state"] == "success" for ti in tis) >= 4

    stack.wait_for(some_done, 180, "the first tasks to finish")
    stack.restart_scheduler()  # mid-run: some tasks done, some running, some queued
    assert stack.wait_for_run("fanout_20", run_id, timeout=300) == "success"
    tis = stack.task_instances("fanout_20", run_id)
    assert len(tis) == 20 and all(ti["state"] == "success" for ti in tis)
    assert all(ti["try_number"] == 1 for ti in tis), [t for t in tis if t["try_number"] != 1]

    # None ran twice. (A job may have been claimed and then refused: with a short
    # task_queued_timeout Airflow revokes and requeues tasks that wait while it adopts.)
    def leaf_runs() -> dict[str, int] | None:
        runs = {t: n for t, n in successful_runs(stack).items() if t.startswith("leaf_")}
        return runs if len(runs) == 20 else None  # every leaf's result has arrived

    assert stack.wait_for(leaf_runs, 60, "every result") == {f"leaf_{i:02d}": 1 for i in range(20)}


def test_a_task_queued_too_long_is_revoked_and_requeued(stack: Stack) -> None:
    stack.wait_for_dag("lonely")
    client = stack.bucket_client()
    revocations = f"{stack.prefix}/v1/jobs/"
    run_id = stack.trigger("lonely")

    def revoked_jobs() -> list[str]:
        return [
            e.key.split("/")[-2]
            for e in client.list_all(revocations)
            if e.key.endswith("/revoked.jws")
        ]

    first = stack.wait_for(revoked_jobs, 120, "Airflow to revoke the stuck task")
    # The revoked job's manifest left the queue: no worker can take it any more.
    queued = [e.key for e in client.list_all(f"{stack.prefix}/v1/queues/nobody/jobs/")]
    assert not any(job in key for job in first for key in queued)
    stack.add_worker("nobody-1", queues="nobody", concurrency=1)
    assert stack.wait_for_run("lonely", run_id, timeout=180) == "success"
    taken = [job for task, job in claims(stack) if task == "waits"]
    assert len(taken) == 1 and taken[0] not in first  # only a live job ran, once
