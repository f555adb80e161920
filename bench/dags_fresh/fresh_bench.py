"""DAGs of bench/fresh_interpreter.py: the same N trivial tasks, forked from the worker or each
in a fresh interpreter (``EDGE_FRESH_BENCH_TASKS``, 10 by default)."""

from __future__ import annotations

import os
import time

import pendulum
from airflow.sdk import DAG, task

START = pendulum.datetime(2026, 1, 1, tz="UTC")
TASKS = int(os.environ.get("EDGE_FRESH_BENCH_TASKS", "10"))


@task
def started() -> float:
    """A trivial task: it says when its code began to run."""
    return time.time()


for dag_id, executor_config in (
    ("bench_forked", None),
    ("bench_fresh", {"edge_mailbox": {"fresh_interpreter": True}}),
):
    with DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False):
        for i in range(TASKS):
            started.override(task_id=f"task_{i}", executor_config=executor_config)()
