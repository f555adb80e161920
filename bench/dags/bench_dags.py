"""Benchmark DAGs: a 10-task chain and a 20-task fan-out of trivial Python tasks."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

START = pendulum.datetime(2026, 1, 1, tz="UTC")


@task
def noop(i: int) -> None:
    """A trivial task: the cost measured is the executor's, not the task's."""


with DAG(dag_id="bench_chain", schedule=None, start_date=START, catchup=False):
    previous = None
    for i in range(10):
        current = noop.override(task_id=f"step_{i}")(i)
        if previous is not None:
            previous >> current
        previous = current

with DAG(dag_id="bench_fanout", schedule=None, start_date=START, catchup=False):
    for i in range(20):
        noop.override(task_id=f"leaf_{i}")(i)
