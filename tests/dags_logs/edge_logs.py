"""For tests/test_e2e_logs.py: a task at the edge that prints a line a second for 15 s and then
stays running until the test has read its log (the test creates the file named by
EDGE_LOGS_RELEASE on the worker), and a task on LocalExecutor whose local log must stay
readable."""

from __future__ import annotations

import os
import time

import pendulum
from airflow.sdk import DAG, task

LINES = 15

with DAG(
    dag_id="edge_logs",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["edge-mailbox-test"],
):

    @task(executor="MailboxExecutor")
    def chatty() -> int:
        for i in range(LINES):
            print(f"chatty line {i:02d}", flush=True)
            time.sleep(1)  # the task's own pace, not a test's synchronisation
        release = os.environ.get("EDGE_LOGS_RELEASE")
        deadline = time.monotonic() + 600
        while release and not os.path.exists(release):  # the test reads the log meanwhile
            if time.monotonic() > deadline:
                raise RuntimeError(f"{release} never appeared")
            time.sleep(0.2)
        return LINES

    @task
    def stay_home() -> None:
        print("a line from LocalExecutor", flush=True)

    chatty()
    stay_home()
