"""Replaying relayed calls against Airflow's Execution API, within an allowlist.

A task legitimately calls a known set of Execution API routes. A relayed call outside that
set is refused here, before it reaches Airflow, and the routes that take a task-instance id
must name the job's own task instance (the server's ``ti:self`` check still applies too).
The job's token is added here and never leaves the scheduler side: a refreshed token in the
``Refreshed-API-Token`` header is kept and stripped from what goes back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs

import httpx

from edge_mailbox.mailbox.models import MAX_RELAY_BODY, RelayAnswer, RelayCall
from edge_mailbox.mailbox.relaycodec import (
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    decode_body,
    encode_body,
    error_answer,
    pick,
)

REFRESH_HEADER = "Refreshed-API-Token"
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


def route_allowed(
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


def is_run_call(call: RelayCall, ti_id: str) -> bool:
    return call.method == "PATCH" and call.path == f"task-instances/{ti_id}/run"


@dataclass
class Replayed:
    answer: RelayAnswer
    refreshed_token: str | None


class ExecutionApi:
    """An httpx client for the Execution API, shared by the relay threads."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=timeout)

    def replay(self, call: RelayCall, token: str) -> Replayed:
        headers = pick(call.headers, REQUEST_HEADERS)
        headers["authorization"] = f"Bearer {token}"
        url = call.path + (f"?{call.query}" if call.query else "")
        request = self.client.build_request(
            call.method, url, headers=headers, content=decode_body(call.body) or None
        )
        try:
            response = self.client.send(request, stream=True)
            try:
                content = _read_at_most(response, MAX_RELAY_BODY)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            # A 5xx makes the Task SDK retry, as it would against an unreachable server.
            return Replayed(error_answer(502, f"execution API unreachable: {exc}"), None)
        refreshed = response.headers.get(REFRESH_HEADER)
        if content is None:
            # Not a 5xx: the Task SDK would only ask again for the same answer.
            length = response.headers.get("content-length")
            size = f"{length} bytes" if length else "larger"
            detail = (
                f"the answer to {call.method} {call.path} is {size}, over edge-mailbox's relay "
                f"limit of {MAX_RELAY_BODY} bytes; keep large data out of XComs and Variables"
            )
            return Replayed(error_answer(413, detail), refreshed)
        answer = RelayAnswer(
            status=response.status_code,
            headers=pick(dict(response.headers), RESPONSE_HEADERS),
            body=encode_body(content),
        )
        return Replayed(answer, refreshed)

    def close(self) -> None:
        self.client.close()


def _read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None once it is known to be over ``limit`` (read no further: an answer
    the relay cannot carry is not held in the scheduler's memory whole)."""
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    content = bytearray()
    for chunk in response.iter_bytes():
        content += chunk
        if len(content) > limit:
            return None
    return bytes(content)
