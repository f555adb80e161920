"""Replaying relayed calls against Airflow's Execution API.

Which calls may be replayed is decided by mailbox/routes.py. The job's token is added here
and never leaves the scheduler side: a refreshed token in the ``Refreshed-API-Token`` header
is kept and stripped from what goes back; an answer too large for the relay becomes a 413
without being read whole.
"""

from __future__ import annotations

from dataclasses import dataclass

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
