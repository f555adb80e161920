"""An httpx transport that carries each Execution API call through the bucket.

The Task SDK's supervisor talks to Airflow through ``airflow.sdk.api.client.Client``; given
this transport, every call becomes a sealed, signed relay request in the bucket's inbox, and
the call blocks until the scheduler side's sealed answer appears (or a long deadline
passes). While the bucket is unreachable the request waits and is delivered later.

Two calls are written behind: the rendered fields (PUT .../rtif) and the task's terminal
state (PATCH .../state). The Task SDK does not use their answers, so the transport answers
them itself (202) as soon as the request is in the bucket, without answer polls;
the reconciler replays a job's calls in the order of their ids (which increase within a
job) and the terminal state before it reports the job's result. That takes two of a
trivial task's three relay round trips off its critical path, and seven requests off the
worker's bill.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
import tenacity

from edge_mailbox.mailbox.codec import TooLarge
from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import MAX_RELAY_BODY, RelayAnswer, RelayCall
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.relaycodec import (
    REQUEST_HEADERS,
    decode_body,
    encode_body,
    error_answer,
    open_answer,
    pick,
    seal_call,
)
from edge_mailbox.mailbox.routes import is_heartbeat, rings_at_once, written_behind
from edge_mailbox.signer import KeyRing, SealError, SealKey, SigningKey, VerificationError

log = logging.getLogger(__name__)
BASE_URL = "http://edge-mailbox.relay/execution/"


class RelayTransport(httpx.BaseTransport):
    def __init__(
        self,
        mailbox: Mailbox,
        job_id: str,
        *,
        worker_key: SigningKey,
        seal_key: SealKey,
        scheduler_seal_key: str,
        scheduler_keys: KeyRing,
        deadline: float = 900.0,
        expected_wait: float = 0.1,
        heartbeat_interval: float = 0.0,
        poll_min: float = 0.01,
        poll_max: float = 0.25,
    ) -> None:
        self.mailbox = mailbox
        self.job_id = job_id
        self.worker_key = worker_key
        self.seal_key = seal_key
        self.scheduler_seal_key = scheduler_seal_key
        self.scheduler_keys = scheduler_keys
        self.deadline = deadline
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.expected_wait = _clamp(expected_wait)
        self.heartbeat_interval = heartbeat_interval
        self.quiet_until = 0.0  # no heartbeat needs relaying before this: /run just succeeded
        self.heartbeats_skipped = 0
        self.round_trips: list[float] = []
        self.answer_waits: list[float] = []
        self.polls = 0
        self.written_behind = 0
        self.last_request_id = ""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        base = httpx.URL(BASE_URL).path
        path = request.url.path
        if not path.startswith(base):
            raise httpx.UnsupportedProtocol(f"edge-mailbox relays only {base}..., not {path}")
        route = path[len(base) :]
        if is_heartbeat(request.method, route) and started < self.quiet_until:
            # The Task SDK's supervisor heartbeats right after /run (its clock for
            # [workers] min_heartbeat_interval starts at zero): /run has just told the
            # server the task is alive, so this one says nothing new and would cost every
            # task a relay round trip. Only that first one: the regular heartbeats, which
            # carry "stop" (409) back from the server, all go through.
            self.quiet_until = 0.0
            self.heartbeats_skipped += 1
            return httpx.Response(204, request=request)
        body = request.read()
        if len(body) > MAX_RELAY_BODY:
            # Refused here, at once: the bucket's readers would refuse it after the upload,
            # and the task would learn only when its wait for the answer ran out.
            return self._refuse(
                request,
                f"{request.method} {route}: a body of {len(body)} bytes is over "
                f"edge-mailbox's relay limit of {MAX_RELAY_BODY} bytes "
                f"({MAX_RELAY_BODY / 2**20:.2f} MiB); keep large data out of XComs and Variables",
            )
        request_id = self._next_request_id()
        awaited = not written_behind(request.method, route)
        call = RelayCall(
            method=request.method,
            path=route,
            query=request.url.query.decode(),
            headers=pick(dict(request.headers), REQUEST_HEADERS),
            body=encode_body(body),
        )
        sealed = seal_call(
            call,
            self.scheduler_seal_key,
            self.mailbox.seal_context(self.job_id, request_id, "request"),
            self.job_id,
            request_id,
            awaited=awaited,
        )
        give_up = started + self.deadline
        try:
            self._retry_until(give_up, lambda: self.mailbox.put_request(sealed, self.worker_key))
        except TooLarge as exc:  # a body within the limit, but long headers: signed, too large
            return self._refuse(request, f"{request.method} {route}: {exc}")
        if awaited or rings_at_once(request.method, route):
            self._retry_until(give_up, self.mailbox.ring_inbox)
        if not awaited:
            self.written_behind += 1
            return httpx.Response(202, request=request)
        sent = time.monotonic()
        answer, missed_until = self._await_answer(request_id, sent, give_up)
        answered = time.monotonic()
        self.round_trips.append(answered - started)
        if request.method == "PATCH" and route.endswith("/run") and 200 <= answer.status < 300:
            self.quiet_until = started + self.heartbeat_interval / 2
        # When did the answer appear? After the last poll that missed it, before the one
        # that found it. If the first poll found it, we looked too late: guess earlier. (The
        # time we found it would feed back: a late schedule would keep itself late.)
        found = answered - sent
        wait = found * 0.6 if missed_until is None else (missed_until - sent + found) / 2
        self.answer_waits.append(wait)
        # Learn from each call, but let one very slow call (a cold api-server) raise the
        # expectation by half at most.
        self.expected_wait = _clamp(
            0.5 * self.expected_wait + 0.5 * min(wait, 2 * self.expected_wait)
        )
        return httpx.Response(
            answer.status, headers=answer.headers, content=decode_body(answer.body), request=request
        )

    def _refuse(self, request: httpx.Request, detail: str) -> httpx.Response:
        """Answer 413 without the bucket, shaped as the relay's own errors for the Task SDK."""
        log.error("relay: %s", detail)
        answer = error_answer(413, detail)
        return httpx.Response(
            answer.status, headers=answer.headers, content=decode_body(answer.body), request=request
        )

    def _next_request_id(self) -> str:
        """A fresh id greater than the job's previous one, even within one millisecond: the
        reconciler replays a job's calls in the order of their ids."""
        request_id = new_id()
        if request_id <= self.last_request_id:
            request_id = f"{int(self.last_request_id, 16) + 1:028x}"
        self.last_request_id = request_id
        return request_id

    def _retry_until(self, give_up: float, action: Callable[[], object]) -> None:
        """Do ``action`` until the bucket takes it, or ``give_up`` passes: then the call fails
        as against an unreachable server, and the Task SDK retries it."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreError),
            stop=lambda state: time.monotonic() > give_up,
            wait=tenacity.wait_exponential(multiplier=self.poll_min, max=5.0),
            before_sleep=lambda state: log.warning(
                "relay: bucket unavailable (%s); retrying", state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            retrying(action)
        except StoreError as exc:
            raise httpx.ConnectError(f"bucket unreachable: {exc}") from exc

    def _await_answer(
        self, request_id: str, sent: float, give_up: float
    ) -> tuple[RelayAnswer, float | None]:
        """Poll for the answer where it is likely to be: first at 85% of the expected wait,
        then every 35% of it until 1.25 times the expected wait has passed, then backing off
        to ``poll_max``. Each poll is a billed GET and ~1 ms of CPU, so a fixed fast poll
        would spend more than the task itself when the scheduler side answers slowly; the
        expected wait comes from the worker's recent jobs and adapts within the job.
        Returns the answer and when the last poll that missed it was made."""
        expected = self.expected_wait
        missed_until: float | None = None
        step = max(self.poll_min, expected * 0.35)
        next_poll = sent + max(self.poll_min, expected * 0.85)
        while True:
            pause = next_poll - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.polls += 1
            try:
                polled = time.monotonic()
                response = self.mailbox.read_response(self.job_id, request_id, self.scheduler_keys)
                answer = open_answer(
                    response.model,
                    self.seal_key,
                    self.mailbox.seal_context(self.job_id, request_id, "response"),
                )
                return answer, missed_until
            except NotFound:
                missed_until = polled
            except (VerificationError, SealError, ProtocolError) as exc:
                log.error("relay: refusing the answer to %s: %s", request_id, exc)
            except StoreError as exc:
                log.warning("relay: bucket unavailable (%s); still waiting", exc)
            now = time.monotonic()
            if now > give_up:
                raise httpx.ReadTimeout(f"no relay answer to {request_id} in {self.deadline:.0f} s")
            if now - sent > 1.25 * expected:
                step = min(step * 1.6, self.poll_max)
            next_poll = now + step


def _clamp(wait: float) -> float:
    """Keep the expected wait within sane bounds whatever one slow or odd call measured."""
    return min(max(wait, 0.02), 2.0)
