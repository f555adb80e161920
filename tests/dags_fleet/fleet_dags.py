"""Tasks that say which worker ran them (its test environment names it), for the fleet's
end-to-end test: who takes work while another is in maintenance, on which queue."""

from __future__ import annotations

import os
import time

from airflow.sdk import dag, task


def _where(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["EDGE_TEST_WORKER"]


@dag(schedule=None, catchup=False)
def fleet_fanout():
    for i in range(4):

        @task(task_id=f"where_{i}")
        def where() -> str:
            return _where(1.0)

        where()


@dag(schedule=None, catchup=False)
def fleet_special():
    @task(queue="special")
    def where() -> str:
        return _where(0)

    where()


@dag(schedule=None, catchup=False, params={"seconds": 8})
def fleet_long():
    @task
    def where(params: dict | None = None) -> str:
        print("long task started")
        name = _where(float((params or {}).get("seconds", 8)))
        print("long task finished on", name)
        return name

    where()


@dag(schedule=None, catchup=False, params={"folder": "/tmp"})
def fleet_barrier():
    """Three tasks that succeed only if all three run at once: each waits for the others."""
    for i in range(3):

        @task(task_id=f"meet_{i}")
        def meet(params: dict | None = None, ti=None) -> str:
            from pathlib import Path

            folder = Path((params or {})["folder"])
            (folder / ti.task_id).touch()
            deadline = time.monotonic() + 120
            while len(list(folder.iterdir())) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("the other tasks did not run beside this one")
                time.sleep(0.2)
            return os.environ["EDGE_TEST_WORKER"]

        meet()


fleet_fanout()
fleet_special()
fleet_long()
fleet_barrier()
