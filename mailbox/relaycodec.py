"""Relayed HTTP in and out of sealed envelopes: the part of the relay both sides share.

A relayed call is a RelayCall (method, path relative to the Execution API root, query,
headers, body) sealed to the scheduler side's per-job key; the answer is a RelayAnswer
sealed to the claiming worker's per-job key. Only a fixed set of headers crosses: never
Authorization, never Refreshed-API-Token.
"""

from __future__ import annotations

import json
import time

from edge_mailbox.mailbox.models import RelayAnswer, RelayCall, RelayRequest, RelayResponse
from edge_mailbox.signer import SealKey, open_sealed, seal
from edge_mailbox.signer.keys import b64url, b64url_decode

# Headers a relayed request may carry to the Execution API, and an answer back.
REQUEST_HEADERS = frozenset(
    {"content-type", "accept", "airflow-api-version", "correlation-id", "traceparent", "user-agent"}
)
RESPONSE_HEADERS = frozenset({"content-type", "airflow-api-version", "retry-after"})


def pick(headers: dict[str, str], allowed: frozenset[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() in allowed}


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
