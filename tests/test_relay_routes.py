"""The relay's allowlist: a task's own routes pass, anything else is refused before Airflow."""

from __future__ import annotations

import pytest

from edge_mailbox.executor.relay import route_allowed

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
