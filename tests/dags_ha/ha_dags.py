"""DAG for the two-scheduler test: a fan-out wide enough that both schedulers queue some."""

from __future__ import annotations

import time

import pendulum
from airflow.sdk import DAG, task


@task
def sleeper(seconds: float) -> None:
    time.sleep(seconds)


with DAG(
    dag_id="ha_fanout",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=32,
):
    for i in range(24):
        sleeper.override(task_id=f"leaf_{i:02d}")(2)
