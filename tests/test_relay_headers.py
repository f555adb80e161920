"""The relay carries exactly the headers the installed Task SDK uses, and never a token.

An answer missing a header the SDK reads breaks a task far from the cause: ``len()`` of a
mapped task's output failed on edge workers with ``KeyError: 'Content-Range'`` because the
relay dropped that header from the HEAD answer. So the lists in mailbox/relaycodec.py are
checked against the SDK's own source: every header name its code reads from a response
(``resp.headers[...]``, ``.headers.get(...)``, ``... in resp.headers``) or writes on a
request (``request.headers[...] = ...``, ``headers={...}``, a propagator's ``inject``). A new
Task SDK that reads or writes another header fails here, naming it and where it is used.

Then a call goes through the real relay (the SDK's own client over RelayTransport, SeaweedFS,
a reconciler) to a small Execution API on loopback that answers with every header the SDK
reads plus a refreshed token: the task gets each header, and neither token header crosses.
"""

from __future__ import annotations

import ast
import http.server
import importlib
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import airflow.sdk
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from test_relay_two_reconcilers import served_job

from edge_mailbox.mailbox.relaycodec import REQUEST_HEADERS, RESPONSE_HEADERS, TOKEN_HEADERS
from edge_mailbox.worker.job_process import RELAY_TOKEN, relay_client

SDK = Path(airflow.sdk.__file__).parent
SITE = SDK.parent.parent  # the directory airflow/ is imported from


def _is_headers(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "headers"


def _of_request(headers: ast.Attribute) -> bool:
    """``request.headers`` or ``response.request.headers``: a request's own headers."""
    owner = headers.value
    return (isinstance(owner, ast.Name) and owner.id == "request") or (
        isinstance(owner, ast.Attribute) and owner.attr == "request"
    )


class HeaderScan(ast.NodeVisitor):
    """The header names one module of the SDK reads from responses and writes on requests."""

    def __init__(self, module: str, path: Path) -> None:
        self.module = module
        self.path = path
        self.reads: dict[str, str] = {}  # lower-cased name -> where
        self.writes: dict[str, str] = {}
        self.unresolved: list[str] = []  # uses whose name is not a literal: a human must look

    def _where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(SITE)}:{getattr(node, 'lineno', '?')}"

    def _name(self, into: dict[str, str], key: ast.AST | None, node: ast.AST) -> None:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            into.setdefault(key.value.lower(), self._where(node))
        else:
            self.unresolved.append(self._where(node))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_headers(node.value):
            if isinstance(node.ctx, ast.Store):
                self._name(self.writes, node.slice, node)
            elif not _of_request(node.value):
                self._name(self.reads, node.slice, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and _is_headers(func.value):
            if func.attr in ("get", "get_list") and not _of_request(func.value):
                self._name(self.reads, node.args[0] if node.args else None, node)
            elif func.attr in ("update", "setdefault"):
                self.unresolved.append(self._where(node))
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "inject"
            and isinstance(func.value, ast.Name)
            and node.args
            and _is_headers(node.args[0])
        ):
            # A trace propagator writing its fields (traceparent, ...) on the request.
            propagator = getattr(importlib.import_module(self.module), func.value.id)
            for field in propagator.fields:
                self.writes.setdefault(field.lower(), self._where(node))
        for keyword in node.keywords:
            if keyword.arg == "headers" and isinstance(keyword.value, ast.Dict):
                for key in keyword.value.keys:
                    self._name(self.writes, key, node)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        # kwargs["headers"] = {"content-type": ...}
        for target in node.targets:
            if (
                isinstance(target, ast.Subscript)
                and isinstance(target.slice, ast.Constant)
                and target.slice.value == "headers"
                and isinstance(node.value, ast.Dict)
            ):
                for key in node.value.keys:
                    self._name(self.writes, key, node)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        # "content-range" in resp.headers
        op, right = node.ops[0], node.comparators[0]
        if isinstance(op, ast.In | ast.NotIn) and _is_headers(right) and not _of_request(right):
            self._name(self.reads, node.left, node)
        self.generic_visit(node)


def scan_sdk() -> HeaderScan:
    """Every header use in the installed Task SDK's Python source, merged."""
    merged = HeaderScan("airflow.sdk", SDK)
    for path in sorted(SDK.rglob("*.py")):
        module = ".".join(path.relative_to(SITE).with_suffix("").parts)
        scan = HeaderScan(module.removesuffix(".__init__"), path)
        scan.visit(ast.parse(path.read_text(), str(path)))
        for name, where in scan.reads.items():
            merged.reads.setdefault(name, where)
        for name, where in scan.writes.items():
            merged.writes.setdefault(name, where)
        merged.unresolved += scan.unresolved
    return merged


@pytest.fixture(scope="module")
def sdk() -> HeaderScan:
    return scan_sdk()


def test_every_header_use_in_the_sdk_names_its_header(sdk: HeaderScan) -> None:
    assert sdk.unresolved == [], "the Task SDK uses headers the scan cannot name: read these"


def test_every_response_header_the_sdk_reads_is_relayed(sdk: HeaderScan) -> None:
    """RESPONSE_HEADERS is what the SDK reads, less the refreshed token."""
    read = {name: where for name, where in sdk.reads.items() if name not in TOKEN_HEADERS}
    dropped = {name: where for name, where in read.items() if name not in RESPONSE_HEADERS}
    assert dropped == {}, "the Task SDK reads these, the relay drops them"
    assert sorted(RESPONSE_HEADERS - set(read)) == [], "relayed, but the Task SDK never reads"
    assert "refreshed-api-token" in sdk.reads  # the scan sees the token header the relay keeps


def test_every_request_header_the_sdk_writes_is_relayed(sdk: HeaderScan) -> None:
    """REQUEST_HEADERS is what the SDK writes, less its (placeholder) Authorization."""
    written = {name: where for name, where in sdk.writes.items() if name not in TOKEN_HEADERS}
    dropped = {name: where for name, where in written.items() if name not in REQUEST_HEADERS}
    assert dropped == {}, "the Task SDK sends these, the relay drops them"
    assert sorted(REQUEST_HEADERS - set(written)) == [], "relayed, but the Task SDK never sends"
    assert "authorization" in sdk.writes


def test_no_token_header_is_on_either_list() -> None:
    assert not (REQUEST_HEADERS | RESPONSE_HEADERS) & TOKEN_HEADERS


class HeaderApi:
    """An Execution API stand-in on loopback: answers every call with every header the SDK
    reads (Content-Range as the XCom count route does), a refreshed token and an
    Authorization for good measure, and keeps the headers each call arrived with."""

    MAPPED = 7

    def __init__(self, reads: set[str]) -> None:
        self.received: list[dict[str, str]] = []
        self.sent = {name: f"value-of-{name}" for name in reads - TOKEN_HEADERS}
        self.sent |= {
            "content-type": "application/json",
            "content-range": f"map_indexes {self.MAPPED}",
            "refreshed-api-token": "refreshed-secret-token",
            "authorization": "Bearer server-secret",
        }
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                api.received.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                for name, value in api.sent.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/execution/"


@pytest.fixture
def header_api(sdk: HeaderScan) -> Iterator[HeaderApi]:
    api = HeaderApi(set(sdk.reads))
    yield api
    api.server.shutdown()


@pytest.mark.seaweed
def test_a_relayed_answer_carries_what_the_sdk_reads_and_no_token(
    seaweed, prefix, header_api: HeaderApi, sdk: HeaderScan
) -> None:
    span = SpanContext(
        trace_id=0x5CE0E9A56015FEC5AADFA328AE398115,
        span_id=0xAB54A98CEB1F0AD2,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("edge", "mailbox")]),
    )
    attached = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span)))
    try:
        with served_job(seaweed, prefix, header_api) as transport:
            client = relay_client(transport)
            # What the task gets back: len() of a mapped output is this count.
            count = client.xcoms.head("d", "r", "square", "return_value")
            assert count.len == HeaderApi.MAPPED
            response = client.head("xcoms/d/r/square/return_value")
    finally:
        otel_context.detach(attached)
    got = {k.lower(): v for k, v in response.headers.items()}
    for name in set(sdk.reads) - TOKEN_HEADERS:
        assert got.get(name) == header_api.sent[name], (name, got)
    assert not set(got) & TOKEN_HEADERS, got
    # And the other way: what the SDK wrote reached the server, but not its placeholder token.
    arrived = header_api.received[-1]
    for name in set(sdk.writes) - TOKEN_HEADERS - {"content-type"}:  # a HEAD has no body
        assert name in arrived, (name, arrived)
    assert arrived["tracestate"] == "edge=mailbox"
    assert arrived["authorization"].startswith("Bearer ")
    assert RELAY_TOKEN not in arrived["authorization"]
