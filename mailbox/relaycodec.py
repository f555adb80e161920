"""Relayed HTTP in and out of sealed envelopes: the part of the relay both sides share.

A relayed call is a RelayCall (method, path relative to the Execution API root, query,
headers, body) sealed to the scheduler side's per-job key; the answer is a RelayAnswer
sealed to the claiming worker's per-job key. Only the headers the Task SDK writes or reads
cross: never Authorization, never Refreshed-API-Token.
"""

from __future__ import annotations

import json
import time

from edge_mailbox.mailbox.models import RelayAnswer, RelayCall, RelayRequest, RelayResponse
from edge_mailbox.signer import SealKey, open_sealed, seal
from edge_mailbox.signer.keys import b64url, b64url_decode

# The headers that cross are the ones the Task SDK's client (airflow/sdk/api/client.py) uses,
# each listed with where; tests/test_relay_headers.py scans the installed SDK and fails when
# it writes or reads one that is not here. Anything else is dropped: an answer missing a
# header the SDK reads breaks the task (len() of a mapped task's output needs Content-Range).

# What the SDK writes on a request, carried to the Execution API.
REQUEST_HEADERS = frozenset(
    {
        "airflow-api-version",  # Client's default headers: Cadwyn picks the API version by it
        "content-type",  # Client.request, on a call with a body
        "correlation-id",  # add_correlation_id: the server logs it and echoes it back
        "traceparent",  # inject_trace_context (W3C trace context): the server continues
        "tracestate",  # the task's trace
        "user-agent",  # Client's default headers
    }
)
# What the SDK reads from a response, carried back to the task.
RESPONSE_HEADERS = frozenset(
    {
        "content-type",  # ServerResponseError.from_response: an error's JSON detail
        "content-range",  # XComOperations.head: "map_indexes N", len() of a mapped output
        "correlation-id",  # raise_on_4xx_5xx_with_note: the note on an error
    }
)
# Never cross, whatever the lists above say: the task's token stays on the scheduler side
# (the worker's is a placeholder; the relay adds the job's own and keeps a refreshed one).
TOKEN_HEADERS = frozenset({"authorization", "refreshed-api-token"})


def pick(headers: dict[str, str], allowed: frozenset[str]) -> dict[str, str]:
    """The headers in ``allowed`` (lower-cased), never a token header."""
    return {
        k.lower(): v
        for k, v in headers.items()
        if k.lower() in allowed and k.lower() not in TOKEN_HEADERS
    }


def seal_call(
    call: RelayCall,
    recipient: str,
    context: str,
    job_id: str,
    request_id: str,
    *,
    awaited: bool = True,
) -> RelayRequest:
    return RelayRequest(
        job_id=job_id,
        request_id=request_id,
        sent_at=time.time(),
        sealed=seal(call.to_json(), recipient, context=context),
        awaited=awaited,
    )


def open_call(request: RelayRequest, key: SealKey, context: str) -> RelayCall:
    return RelayCall.from_json(open_sealed(request.sealed, key, context=context))


def seal_answer(
    answer: RelayAnswer, recipient: str, context: str, job_id: str, request_id: str
) -> RelayResponse:
    return RelayResponse(
        job_id=job_id,
        request_id=request_id,
        answered_at=time.time(),
        sealed=seal(answer.to_json(), recipient, context=context),
    )


def open_answer(response: RelayResponse, key: SealKey, context: str) -> RelayAnswer:
    return RelayAnswer.from_json(open_sealed(response.sealed, key, context=context))


def encode_body(data: bytes) -> str:
    return b64url(data) if data else ""


def decode_body(text: str) -> bytes:
    return b64url_decode(text) if text else b""


def error_answer(status: int, detail: str) -> RelayAnswer:
    """An answer the relay makes itself, shaped like FastAPI's errors so the SDK shows it."""
    body = json.dumps({"detail": {"reason": "edge-mailbox relay", "message": detail}}).encode()
    return RelayAnswer(
        status=status, headers={"content-type": "application/json"}, body=encode_body(body)
    )


def seal_callback_data(data: dict, recipient: str, context: str) -> dict:
    """A callback's data as the manifest carries it: its import path in clear (for logs and
    listings), everything else sealed to the scheduler side's per-job key."""
    return {
        "path": data.get("path", ""),
        "sealed": seal(json.dumps(data).encode(), recipient, context=context),
    }


def open_callback_data(data: dict, key: SealKey, context: str) -> bytes:
    return open_sealed(str(data.get("sealed", "")), key, context=context)
