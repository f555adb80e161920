"""Every ordinary kind of task, in one DAG that succeeds, all on edge workers: operators,
decorators, branching, a virtualenv, dynamic mapping, XComs across workers and queues,
Variables and Connections, a deferrable sensor, setup/teardown, templates and params, and a
task taking two slots. tests/test_e2e_task_kinds.py asserts on each; docs/writing-dags.md
shows the same code.

Queues: ``default`` is served by worker ``edge-a``, ``far`` by worker ``edge-b``.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, setup, task, teardown


def multiply(n: int) -> int:
    return n * 7


with DAG(
    dag_id="kinds",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"x": "default-x", "y": "default-y"},
    tags=["edge-mailbox"],
):
    # Classic operators.
    BashOperator(task_id="bash", bash_command='echo "bash ran with $((6 * 7))"')
    PythonOperator(task_id="python_op", python_callable=multiply, op_kwargs={"n": 6})

    # Templates and params (a run's conf overrides a param); ds needs a logical date.
    BashOperator(
        task_id="templated",
        bash_command='echo "x={{ params.x }} y={{ params.y }} ds={{ ds }} run={{ run_id }}"',
    )

    # Decorators.
    @task
    def decorated() -> dict:
        return {"kind": "task", "answer": 42}

    @task.bash
    def bash_decorated() -> str:
        return "echo decorated bash $((6 * 7))"

    @task.virtualenv(system_site_packages=False, requirements=[])
    def in_venv() -> dict:
        import sys  # a virtualenv task sees only what its own environment has

        return {"in_venv": sys.prefix != sys.base_prefix, "prefix": sys.prefix}

    decorated()
    bash_decorated()
    in_venv()

    # Branching: the branch not taken is skipped, and never sent to a worker.
    @task.branch
    def choose() -> str:
        return "left"

    @task
    def left() -> str:
        return "left ran"

    @task
    def right() -> str:
        return "right ran"

    choose() >> [left(), right()]

    # Dynamic task mapping: ten instances, then one task reducing their XComs.
    @task
    def square(x: int) -> int:
        return x * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    total(square.expand(x=list(range(10))))

    # XCom across workers: pushed on queue "default" (edge-a), pulled on "far" (edge-b).
    @task(queue="default")
    def push(ti=None) -> dict:
        ti.xcom_push(key="extra", value="pushed explicitly")
        return {"from": "push", "numbers": [1, 2, 3]}

    @task(queue="far")
    def pull(value: dict, ti=None) -> str:
        extra = ti.xcom_pull(task_ids="push", key="extra")
        return f"pulled {value['numbers']} from {value['from']}, and {extra!r}"

    pull(push())

    # Variables and Connections, read by the task through the relay.
    @task
    def read_config() -> dict:
        from airflow.sdk import BaseHook, Variable

        conn = BaseHook.get_connection("kinds_conn")
        return {
            "variable": Variable.get("kinds_var"),
            "json_variable": Variable.get("kinds_json", deserialize_json=True),
            "conn": f"{conn.conn_type}://{conn.login}@{conn.host}:{conn.port}",
            "password_length": len(conn.password or ""),  # not the secret itself: logs travel
        }

    read_config()

    # Deferrable: the sensor defers to the triggerer, which frees the slot; when its trigger
    # fires, the task is queued again and resumes (execute_complete) on an edge worker.
    DateTimeSensorAsync(
        task_id="wait_deferred",
        target_time="{{ macros.datetime.utcnow() + macros.timedelta(seconds=6) }}",
    )

    # Setup and teardown.
    @setup
    def acquire() -> str:
        return "scratch-1"

    @task
    def use(resource: str) -> str:
        return f"used {resource}"

    @teardown
    def release(resource: str) -> str:
        return f"released {resource}"

    resource = acquire()
    use(resource) >> release(resource)

    # Two of a worker's slots (its concurrency) and of the pool.
    @task(pool_slots=2)
    def wide() -> str:
        return "wide ran"

    wide()
