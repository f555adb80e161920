"""DAGs for the scheduler-side tests: a 20-task fan-out of short sleepers, and a task on a
queue no worker serves (until the test starts one)."""

from __future__ import annotations

import time

import pendulum
from airflow.sdk import DAG, task

START = pendulum.datetime(2026, 1, 1, tz="UTC")


@task
def sleeper(seconds: float) -> None:
    time.sleep(seconds)


with DAG(dag_id="fanout_20", schedule=None, start_date=START, catchup=False):
    for i in range(20):
        sleeper.override(task_id=f"leaf_{i:02d}")(3)

with DAG(dag_id="lonely", schedule=None, start_date=START, catchup=False):
    sleeper.override(task_id="waits", queue="nobody")(1)
