"""The relay's vocabulary, the one place both sides read it: which Execution API routes a
job may call through the bucket, which calls the worker writes behind (answers itself), which
ring the inbox at once, and the calls the relay treats specially (/run, the heartbeat, a
callback's data).

The worker decides from these what to wait for; the scheduler side refuses whatever is not
allowed here before it reaches Airflow.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs

# A call the scheduler side answers itself, never the Execution API: an executor callback's
# data (its kwargs may hold secrets) travels sealed to the scheduler in the manifest, and
# the claiming worker asks for it, to have it sealed to its own key like any answer.
CALLBACK_DATA_PATH = "edge-mailbox/callback-data"

_SEG = r"[^/]+"
# (methods, path pattern); "{ti}" stands for the job's own task-instance id.
ALLOWED_ROUTES: tuple[tuple[frozenset[str], str], ...] = tuple(
    (frozenset(methods.split()), pattern)
    for methods, pattern in (
        ("PATCH", r"task-instances/{ti}/(run|state|skip-downstream|rendered-map-index)"),
        ("PUT", r"task-instances/{ti}/(heartbeat|rtif)"),
        ("GET", r"task-instances/{ti}/(previous-successful-dagrun|validate-inlets-and-outlets)"),
        ("GET", r"task-instances/(count|states|breadcrumbs)"),
        ("GET", rf"task-instances/previous/{_SEG}/{_SEG}"),
        ("GET", r"task-reschedules/{ti}/start_date"),
        ("GET POST DELETE HEAD", rf"xcoms/{_SEG}/{_SEG}/{_SEG}/{_SEG}"),
        ("GET", rf"xcoms/{_SEG}/{_SEG}/{_SEG}/{_SEG}/(item/{_SEG}|slice)"),
        ("GET", r"variables/keys"),
        ("GET PUT DELETE", rf"variables/{_SEG}"),
        ("GET", rf"connections/{_SEG}"),
        ("GET", r"assets/by-(name|uri|alias)"),
        ("GET", r"asset-events/by-(asset|asset-alias)"),
        ("GET", rf"dags/{_SEG}"),
        ("GET", r"dag-runs/(count|previous)"),
        ("GET POST", rf"dag-runs/{_SEG}/{_SEG}"),
        ("GET", rf"dag-runs/{_SEG}/{_SEG}/state"),
        ("POST", rf"dag-runs/{_SEG}/{_SEG}/clear"),
        ("GET POST PATCH", r"hitlDetails/{ti}"),
        ("GET PUT DELETE", rf"store/ti/{{ti}}(/{_SEG})?"),
        ("GET PUT DELETE", r"store/asset/by-(name|uri)/(value|clear)"),
    )
)

# A connection test's job (manifest ``connection_test``) may make exactly the two calls of the
# Task SDK's connection-test supervisor, for its own test ("{ct}"), and nothing of the task
# routes above: fetch the connection under test (once; the Execution API marks the test
# running) and report its state. The connection comes from the test's own request, never
# from ``connections/``, so the job can read no other connection and touch no other test.
CONNECTION_TEST_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "connection-tests/{ct}/connection"),
    ("PATCH", "connection-tests/{ct}"),
)


def allowed_for_connection_test(method: str, path: str, test_id: str, query: str = "") -> bool:
    """Is ``method path?query`` a call the job of connection test ``test_id`` may make? The
    path must be one of the two exactly (no query: the supervisor sends none)."""
    return not query and (method, path) in {
        (allowed_method, route.replace("{ct}", test_id))
        for allowed_method, route in CONNECTION_TEST_ROUTES
    }


# What a path may not hold: percent-escapes (the Execution API would decode them into
# slashes, dots or a query), a query or fragment, a backslash (read as a slash by some
# servers) and control characters. The worker sends the decoded path; a task's legitimate
# ids and keys have none of these.
_UNSAFE_PATH = re.compile(r"[%?#\\\x00-\x1f\x7f]")
_XCOM_WRITE = re.compile(rf"xcoms/({_SEG})/({_SEG})/({_SEG})/{_SEG}")


@runtime_checkable
class TaskKey(Protocol):
    """The job's task instance, as Airflow's ``TaskInstanceKey`` names it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int


def allowed(
    method: str, path: str, ti_id: str, *, task: object | None = None, query: str = ""
) -> bool:
    """Is ``method path?query`` (relative to the Execution API root) a call this job may make?

    ``task`` is the job's task-instance key: XCom writes (``POST``, ``DELETE``; the Task
    SDK's ``XCom.set`` and the clearing of ``xcom_keys_to_clear``) must name its dag, run,
    task and map index, since the Execution API lets any task write any XCom. A key without
    them (a callback's) writes none; ``None`` (a caller that does not pass the key) leaves
    XCom writes unchecked.
    """
    if _UNSAFE_PATH.search(path) or "#" in query:
        return False
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return False  # also a leading slash, which would leave the API root
    xcom_write = method in ("POST", "DELETE") and path.startswith("xcoms/")
    if xcom_write and task is not None and not _own_xcom(path, query, task):
        return False
    for methods, pattern in ALLOWED_ROUTES:
        if method in methods and re.fullmatch(pattern.replace("{ti}", re.escape(ti_id)), path):
            return True
    return False


def _own_xcom(path: str, query: str, task: object) -> bool:
    """Does an XCom write name the job's own task instance (and its map index, which the Task
    SDK sends only for a mapped task)?"""
    match = _XCOM_WRITE.fullmatch(path)
    if match is None or not isinstance(task, TaskKey):
        return False
    if match.groups() != (task.dag_id, task.run_id, task.task_id):
        return False
    map_indexes = parse_qs(query, keep_blank_values=True).get("map_index", [str(-1)])
    return all(value == str(task.map_index) for value in map_indexes)


def is_run(method: str, path: str, ti_id: str) -> bool:
    """``PATCH task-instances/{ti}/run``: the call that starts a try (a workload token)."""
    return method == "PATCH" and path == f"task-instances/{ti_id}/run"


def is_heartbeat(method: str, path: str) -> bool:
    return method == "PUT" and path.startswith("task-instances/") and path.endswith("/heartbeat")


def written_behind(method: str, path: str) -> bool:
    """Calls whose answer the Task SDK ignores: rendered fields and terminal states (read in
    ``airflow/sdk/api/client.py``: ``set_rtif``, ``succeed``, ``finish``, ``retry``,
    ``defer``, ``reschedule`` return nothing of the response)."""
    return (method == "PUT" and path.endswith("/rtif")) or (
        method == "PATCH" and path.endswith("/state")
    )


def rings_at_once(method: str, path: str) -> bool:
    """A call written behind that still rings the inbox at once: the terminal state (Airflow
    schedules the downstream tasks from it, and the job's result comes only after the
    supervisor's exit). Rendered fields need no ring: the job's next call, or its result,
    rings in a moment."""
    return method == "PATCH" and path.endswith("/state")
