"""The relay's allowlist: a task's own routes pass, anything else is refused before Airflow."""

from __future__ import annotations

import pytest
from airflow.models.callback import CallbackKey
from airflow.models.taskinstancekey import TaskInstanceKey

from edge_mailbox.mailbox.routes import allowed as route_allowed

TI = "01a20147-3ff0-76e2-ac44-bf7425a784de"
OTHER = "01a20147-3ff0-76e2-ac44-000000000000"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", f"task-instances/{TI}/run"),
        ("PUT", f"task-instances/{TI}/heartbeat"),
        ("PUT", f"task-instances/{TI}/rtif"),
        ("PATCH", f"task-instances/{TI}/state"),
        ("GET", "connections/my_db"),
        ("GET", "variables/some_key"),
        ("POST", "xcoms/dag/run/task/return_value"),
        ("GET", "xcoms/dag/run/task/return_value"),
        ("HEAD", "xcoms/dag/run/task/return_value"),
        ("GET", "task-instances/states"),
        ("GET", "dag-runs/dag/run/state"),
    ],
)
def test_a_tasks_own_routes_pass(method: str, path: str) -> None:
    assert route_allowed(method, path, TI)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", f"task-instances/{OTHER}/state"),  # another task instance
        ("PATCH", f"task-instances/{OTHER}/run"),
        ("DELETE", "connections/my_db"),  # tasks read connections, never delete them
        ("GET", "connection-tests/abc/connection"),
        ("GET", "health"),
        ("GET", f"task-instances/{TI}/../../variables/x"),
        ("GET", "/variables/x"),
        ("POST", "dags/some_dag"),
    ],
)
def test_everything_else_is_refused(method: str, path: str) -> None:
    assert not route_allowed(method, path, TI)


@pytest.mark.parametrize(
    "path",
    [
        "variables/%2e%2e",  # percent-escapes: the Execution API would decode them again
        "variables/a%2F..%2Fb",
        "variables/x?y=1",  # a query or fragment smuggled in the path
        "variables/x#y",
        "variables/a\\..\\b",  # a backslash some servers read as a slash
        "variables/.",  # dot segments
        "connections/..",
        "xcoms/dag/./task/return_value",
        "xcoms/dag/run/../return_value",
        "variables/a\r\nx-evil: 1",  # control characters
    ],
)
def test_paths_with_escapes_queries_or_dot_segments_are_refused(path: str) -> None:
    assert not route_allowed("GET", path, TI, task=OWN)


DAG, RUN, TASK = "etl", "manual__2026-11-22T03:22:56.345178+00:00", "load"
OWN = TaskInstanceKey(dag_id=DAG, task_id=TASK, run_id=RUN, try_number=1, map_index=-1)
MAPPED = OWN._replace(map_index=3)


@pytest.mark.parametrize(
    ("task", "method", "path", "query"),
    [
        # XCom.set of the task's own return value and pushes (task_runner._xcom_push)
        (OWN, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", ""),
        (OWN, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", "mapped_length=4"),
        (OWN, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", "dag_result=true"),
        # a mapped task instance names its own map index
        (MAPPED, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", "map_index=3"),
        (MAPPED, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/k", "map_index=3&mapped_length=2"),
        # XCom.delete of xcom_keys_to_clear before a retry runs
        (OWN, "DELETE", f"xcoms/{DAG}/{RUN}/{TASK}/pushed", ""),
        (MAPPED, "DELETE", f"xcoms/{DAG}/{RUN}/{TASK}/pushed", "map_index=3"),
        # reads may name any task
        (OWN, "GET", f"xcoms/other_dag/{RUN}/other_task/return_value", "map_index=7"),
        (OWN, "HEAD", f"xcoms/{DAG}/{RUN}/extract/return_value", ""),
    ],
)
def test_a_tasks_own_xcom_writes_and_any_reads_pass(
    task: TaskInstanceKey, method: str, path: str, query: str
) -> None:
    assert route_allowed(method, path, TI, task=task, query=query)


@pytest.mark.parametrize(
    ("task", "method", "path", "query"),
    [
        (OWN, "POST", f"xcoms/other_dag/{RUN}/{TASK}/return_value", ""),
        (OWN, "POST", f"xcoms/{DAG}/scheduled__2026-01-01T00:00:00+00:00/{TASK}/k", ""),
        (OWN, "POST", f"xcoms/{DAG}/{RUN}/extract/return_value", ""),
        (OWN, "DELETE", f"xcoms/{DAG}/{RUN}/extract/return_value", ""),
        # another map index of the same task: a sibling's value
        (OWN, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", "map_index=0"),
        (MAPPED, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", ""),
        (MAPPED, "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", "map_index=4"),
        (MAPPED, "DELETE", f"xcoms/{DAG}/{RUN}/{TASK}/k", "map_index=3&map_index=4"),
        # a callback has no task instance: it writes no XCom
        (CallbackKey(id=TI), "POST", f"xcoms/{DAG}/{RUN}/{TASK}/return_value", ""),
    ],
)
def test_xcom_writes_for_another_task_are_refused(
    task: object, method: str, path: str, query: str
) -> None:
    assert not route_allowed(method, path, TI, task=task, query=query)


def test_a_query_with_a_fragment_is_refused() -> None:
    path = f"xcoms/{DAG}/{RUN}/{TASK}/return_value"
    assert not route_allowed("GET", path, TI, task=OWN, query="map_index=1#x")
