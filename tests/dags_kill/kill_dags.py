"""For tests/test_e2e_worker_kill.py: a task that prints numbered lines, one a second, so
that a worker can be killed in the middle and the retried try's log checked line by line."""

from __future__ import annotations

import time
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

LINES = 30
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@task(retries=1, retry_delay=timedelta(seconds=1))
def count() -> int:
    for i in range(LINES):
        print(f"count line {i:02d}", flush=True)
        time.sleep(1)  # the task's own pace, not a test's synchronisation
    return LINES


with DAG(dag_id="kill_main", schedule=None, start_date=START, catchup=False):
    count.override(queue="kill-main")()

with DAG(dag_id="kill_tree", schedule=None, start_date=START, catchup=False):
    count.override(queue="kill-tree")()
