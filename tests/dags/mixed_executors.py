"""One DAG, two executors: the default (LocalExecutor) and MailboxExecutor, chosen per task."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

with DAG(
    dag_id="mixed_executors",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):

    @task
    def on_the_scheduler_host() -> str:
        return "local"

    @task(executor="MailboxExecutor")
    def at_the_edge(previous: str) -> str:
        return f"{previous} then edge"

    at_the_edge(on_the_scheduler_host())
