"""Tasks that fail on edge workers as they would on local ones: a task retried once, then
failed; a task killed by its execution_timeout; a teardown that runs although its work failed.
tests/test_e2e_task_kinds.py asserts on each; docs/writing-dags.md shows the same code."""

from __future__ import annotations

import time
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, setup, task, teardown

with DAG(
    dag_id="kinds_failures",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["edge-mailbox"],
):

    @task(retries=1, retry_delay=timedelta(seconds=1))
    def doomed(ti=None) -> None:
        raise RuntimeError(f"doomed on purpose, try {ti.try_number}")

    @task(execution_timeout=timedelta(seconds=5))
    def too_slow() -> None:
        for i in range(60):
            print(f"still sleeping {i}", flush=True)
            time.sleep(1)

    doomed()
    too_slow()

    @setup
    def acquire() -> str:
        return "scratch-2"

    @task
    def work_that_fails(resource: str) -> None:
        raise ValueError(f"work on {resource} failed on purpose")

    @teardown
    def release(resource: str) -> str:
        return f"released {resource}"

    resource = acquire()
    work_that_fails(resource) >> release(resource)
