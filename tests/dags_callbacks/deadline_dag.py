"""A run that misses its deadline on purpose: the SyncCallback runs on an edge worker."""

from __future__ import annotations

import time
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task
from airflow.sdk.definitions.callback import SyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

# A callback's kwargs may hold secrets: the test looks for this one in the bucket.
CALLBACK_SECRET = "callback-secret-2f9c41d7e0"

with DAG(
    dag_id="missed_deadline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(seconds=2),
        callback=SyncCallback(
            "edge_callbacks.record", kwargs={"tag": "deadline-missed", "secret": CALLBACK_SECRET}
        ),
    ),
):

    @task
    def slow() -> None:
        time.sleep(12)

    slow()
