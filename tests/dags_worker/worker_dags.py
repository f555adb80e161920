"""DAGs for the worker tests: sleepers with slots, queues and retries."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

START = pendulum.datetime(2026, 1, 1, tz="UTC")


@task
def nap(seconds: float) -> float:
    """Sleep, printing a line a second, and return when it started (for overlap checks)."""
    started = time.time()
    for i in range(int(seconds)):
        print(f"nap line {i}", flush=True)
        time.sleep(1)
    return started


@task
def held_nap() -> None:
    """Stay running until the test creates the file named by EDGE_TEST_RELEASE on the worker:
    a task that is surely still running when the test acts on it, however slow the machine."""
    release = os.environ["EDGE_TEST_RELEASE"]
    deadline = time.monotonic() + 600
    print("held nap started", flush=True)
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{release} never appeared")
        time.sleep(0.2)
    print("held nap released", flush=True)


with DAG(dag_id="slots", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="two_slots", pool_slots=2, queue="slots")(8)
    nap.override(task_id="one_slot_a", queue="slots")(8)
    nap.override(task_id="one_slot_b", queue="slots")(8)

with DAG(dag_id="too_big", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="four_slots", pool_slots=4, queue="slots")(1)

with DAG(dag_id="two_queues", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="on_alpha", queue="alpha")(1)
    nap.override(task_id="on_beta", queue="beta")(1)

with DAG(dag_id="long_nap", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="nap", queue="naps", retries=1, retry_delay=timedelta(seconds=1))(20)

with DAG(dag_id="held_nap", schedule=None, start_date=START, catchup=False):
    held_nap.override(task_id="nap", queue="naps", retries=1, retry_delay=timedelta(seconds=1))()

with DAG(dag_id="doomed_nap", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="nap", queue="naps", retries=0)(300)

with DAG(dag_id="outage_nap", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="nap", queue="outage")(60)

with DAG(dag_id="drain_nap", schedule=None, start_date=START, catchup=False):
    nap.override(task_id="nap", queue="drain", retries=0)(300)
