"""For tests/test_iam_policies.py: one task that runs at the edge and logs, and one on a queue
no worker serves, which Airflow revokes when it has been queued too long."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

with DAG(
    dag_id="iam_life",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["edge-mailbox-test"],
):

    @task
    def work() -> str:
        print("iam line from the edge", flush=True)
        return "done at the edge"

    @task(queue="unserved")
    def orphan() -> None:
        print("never runs", flush=True)

    work()
    orphan()
