"""The demo DAG: a Bash task, a Python task returning a value, a task pulling it via XCom, and a
task reading a Connection, all on edge workers that reach only the bucket."""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, task

with DAG(
    dag_id="edge_demo",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["edge-mailbox"],
):
    hello = BashOperator(
        task_id="hello_bash", bash_command="echo hello from $(hostname) at the edge"
    )

    @task
    def produce() -> dict:
        return {"answer": 42, "greeting": "edge-xcom-value-7f3a"}

    @task
    def consume(value: dict) -> str:
        assert value["answer"] == 42, value
        return f"got {value['greeting']}"

    @task
    def read_connection() -> str:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection("edge_demo_db")
        # Prove the secret arrived without printing it (the log goes to the bucket too).
        return f"password length {len(conn.password or '')}, login {conn.login}"

    hello >> consume(produce())
    hello >> read_connection()
