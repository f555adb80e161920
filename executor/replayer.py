"""The relay's scheduler side: each relayed call verified, replayed once against the
Execution API with the job's token, and answered sealed to the claiming worker.

A job's requests are replayed by one relay thread, one after another in the order of their
ids (the order the worker sent them), and its result is reported only after them: a task's
terminal state is a request the worker does not wait for, and it must reach Airflow before
the executor hears the job ended. A job whose thread is still busy is looked at again when
that thread is done.

Never twice: a request is replayed only by the reconciler holding its lease (a conditional
create, taken over by compare-and-swap when its holder died), never when an answer exists
(read on rebuild; asked of the bucket when a lease was found), never below the job's
high-water mark, and never when it is older than its claim or ``relay_request_max_age``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import tenacity

from edge_mailbox.executor import metrics
from edge_mailbox.executor.inbox import Inbox, Item
from edge_mailbox.executor.jobs import Job, Phase
from edge_mailbox.executor.relay import ExecutionApi, Replayed
from edge_mailbox.executor.reporting import Reporter
from edge_mailbox.executor.settings import ExecutorSettings
from edge_mailbox.mailbox.codec import Signed
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import RelayAnswer, RelayCall, RelayRequest
from edge_mailbox.mailbox.protocol import Lease, Mailbox
from edge_mailbox.mailbox.relaycodec import (
    encode_body,
    error_answer,
    open_call,
    open_callback_data,
    seal_answer,
)
from edge_mailbox.mailbox.routes import (
    CALLBACK_DATA_PATH,
    allowed,
    allowed_for_connection_test,
    is_run,
)
from edge_mailbox.signer import SealError, SealKey, VerificationError

log = logging.getLogger(__name__)

TokenMinter = Callable[[str, str], str]  # (ti_id, scope) -> JWT
# How long a reconciler may hold a relay request before another may take it over, as a
# multiple of execution_api_timeout (a replay never takes longer than that): a scheduler that
# died between taking a request and answering it delays that task by this much, no more.
LEASE_TIMEOUTS = 2.0
LEASE_MARGIN = 10.0
# A worker stamps both its claim and its requests: only rounding separates them.
CLOCK_SLACK = 1.0


class _NoResult:
    """No result to report with a job's requests."""


NO_RESULT = _NoResult()
Result = Item | None | _NoResult


class Replayer:
    def __init__(
        self,
        mailbox: Mailbox,
        settings: ExecutorSettings,
        reporter: Reporter,
        inbox: Inbox,
        mint_token: TokenMinter,
        stopping: threading.Event,
        on_done: Callable[[bool], None],
    ) -> None:
        self.mailbox = mailbox
        self.settings = settings
        self.reporter = reporter
        self.inbox = inbox
        self.mint_token = mint_token
        self.stopping = stopping
        self.on_done = on_done  # (list again?) when a job's thread is done
        self.api = ExecutionApi(settings.execution_api_url, settings.execution_api_timeout)
        self.pool = ThreadPoolExecutor(settings.relay_threads, thread_name_prefix="mailbox-relay")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()}"
        self.lease = settings.execution_api_timeout * LEASE_TIMEOUTS + LEASE_MARGIN
        # Request ids this reconciler replayed (recent ones): with several schedulers, each
        # id must appear in one reconciler's list only (the benchmarks and the HA test read it).
        self.relayed: deque[str] = deque(maxlen=100_000)
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()  # jobs a relay thread is serving
        self._look_again: set[str] = set()  # listed while in flight: list again after

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.api.close()

    def serve(self, job_id: str, requests: list[Item], result: Result) -> bool:
        """Hand a job's listed requests (and its result, to report after them) to a relay
        thread; a result alone is reported at once, in the caller's thread. ``result`` is
        NO_RESULT, or the result's notice (None: an adopted job's result found without one).
        False if a relay thread is busy with the job: it is listed again when it is done."""
        with self._lock:
            if job_id in self._in_flight:
                self._look_again.add(job_id)
                return False
            if requests:
                self._in_flight.add(job_id)
        if not requests:
            self._report(job_id, result)
            return True
        ordered = sorted(requests, key=lambda item: item.request_id or "")
        self.pool.submit(self._serve, job_id, ordered, result)
        return True

    def _report(self, job_id: str, result: Result) -> None:
        if result is not NO_RESULT:
            assert not isinstance(result, _NoResult)
            key = result.key if result else None
            self.inbox.handle(key, "result", self.reporter.on_result, job_id, result)

    def _serve(self, job_id: str, requests: list[Item], result: Result) -> None:
        """A relay thread. Stops at a request another reconciler is answering (or a bucket
        error), so that no later call overtakes it; the inbox is listed again soon."""
        relist = False
        try:
            for item in requests:
                if not self.inbox.handle(item.key, "relay request", self.on_request, item):
                    relist = True
                    return
            self._report(job_id, result)
        except StoreError as exc:
            log.warning("edge-mailbox: relay for %s postponed, bucket unavailable: %s", job_id, exc)
            relist = True
        finally:
            with self._lock:
                self._in_flight.discard(job_id)
                if job_id in self._look_again:  # listed again while this thread was busy
                    self._look_again.discard(job_id)
                    relist = True
            self.on_done(relist)

    def on_request(self, item: Item) -> bool:
        """Replay one relay request and answer it. False only when another reconciler holds
        it (the job's later calls must wait); anything refused is dealt with: True."""
        started = time.monotonic()
        admitted = self._admit(item)
        if admitted is None:
            return True
        job, request = admitted
        assert item.request_id and job.claim
        self.reporter.report_claimed(job)  # in case its claim notice is late or lost
        with job.lock:  # one call at a time per job
            if item.request_id in job.answered:
                self.inbox.done(item.key)
                return True
            if item.request_id <= job.high_water:
                self.inbox.reject(item.key, "relay request put back after a later one was handled")
                return True
            lease = self.mailbox.take_request(job.job_id, item.request_id, self.owner, self.lease)
            if not lease:
                log.debug("edge-mailbox: %s is being answered by another reconciler", item.key)
                return False
            job.high_water = max(job.high_water, item.request_id)
            # A lease that existed: a reconciler (this one before a restart, a dead peer) took
            # the request before. Only the bucket knows whether it answered it.
            if lease is Lease.RESUMED and self.mailbox.answered(job.job_id, item.request_id):
                log.info("edge-mailbox: %s was answered before; not replayed", item.key)
                job.answered.add(item.request_id)
                self.inbox.done(item.key)
                return True
            seal_key = SealKey.derive(self.settings.signing_key.seed(), job.job_id)
            context = self.mailbox.seal_context(job.job_id, item.request_id, "request")
            try:
                call = open_call(request.model, seal_key, context)
            except (SealError, ProtocolError) as exc:
                self.inbox.reject(item.key, f"relay request cannot be opened: {exc}")
                return True
            answer = self._answer(job, call, seal_key, request.model.awaited)
            response = seal_answer(
                answer,
                job.claim.model.seal_key,
                self.mailbox.seal_context(job.job_id, item.request_id, "response"),
                job.job_id,
                item.request_id,
            )
            try:
                self.mailbox.put_response(response, self.settings.signing_key)
            except AlreadyExists:
                log.info("edge-mailbox: %s was already answered", item.key)
            job.answered.add(item.request_id)
            self.relayed.append(item.request_id)
            self.inbox.done(item.key)
        metrics.timing("relay_latency", time.time() - request.model.sent_at)
        log.debug(
            "edge-mailbox: relayed %s %s for %s -> %s in %.0f ms (%.0f ms after it was sent)",
            call.method,
            call.path,
            job.job_id,
            answer.status,
            (time.monotonic() - started) * 1000,
            (time.time() - request.model.sent_at) * 1000,
        )
        if not request.model.awaited and answer.status >= 400:
            # Status and reason only: an error body may echo what the task sent (a 422 quotes
            # its input), and that must not reach the scheduler's log.
            log.warning(
                "edge-mailbox: job %s: the Execution API answered %s %s to %s %s, which the "
                "worker did not wait for",
                job.job_id,
                answer.status,
                _phrase(answer.status),
                call.method,
                call.path,
            )
        return True

    def _admit(self, item: Item) -> tuple[Job, Signed[RelayRequest]] | None:
        """The request and its job, if the request is the claim holder's and young enough;
        otherwise it is refused (or parked) and None returned."""
        assert item.request_id
        try:
            job = self.reporter.job_from_claim(item.job_id)
        except NotFound:
            self.inbox.reject(item.key, "relay request for a job nobody claimed")
            return None
        except (VerificationError, ProtocolError) as exc:
            self.inbox.refuse(item.key, "relay request refused", exc)
            return None
        try:
            request = self.mailbox.read_request(
                item.job_id, item.request_id, self.settings.worker_keys
            )
        except NotFound:  # listed, then answered and deleted by another relay thread
            log.debug("edge-mailbox: %s was answered meanwhile", item.key)
            return None
        except (VerificationError, ProtocolError) as exc:
            self.inbox.refuse(item.key, "relay request refused", exc)
            return None
        assert job.claim
        if request.kid != job.claim.kid or request.model.job_id != item.job_id:
            self.inbox.reject(item.key, f"relay request signed by {request.kid}, not the claim's")
            return None
        too_old = self._too_old(job, request.model.sent_at)
        if too_old:
            self.inbox.reject(item.key, f"relay request {too_old}")
            return None
        return job, request

    def _answer(self, job: Job, call: RelayCall, seal_key: SealKey, awaited: bool) -> RelayAnswer:
        """What the call gets: refused by the relay's rules, or the Execution API's answer."""
        if job.phase is Phase.REVOKED:
            return error_answer(409, "the job was revoked by the scheduler")
        if job.finished:
            return error_answer(409, "the job has already finished")
        if call.path == CALLBACK_DATA_PATH and call.method == "GET":
            return self._callback_data(job, seal_key)
        method, path, query = call.method, call.path, call.query
        if job.connection_test:
            permitted = allowed_for_connection_test(method, path, job.ti_id, query)
        else:
            permitted = allowed(method, path, job.ti_id, task=job.ti_key, query=query)
        if not permitted:
            log.warning("edge-mailbox: job %s: refused %s %s", job.job_id, call.method, call.path)
            return error_answer(403, f"{call.method} {call.path} is not a relayed route")
        if job.connection_test:  # Airflow's connection-test routes take workload tokens only
            return self._replay(call, self.mint_token(job.ti_id, "workload"), awaited).answer
        run = is_run(call.method, call.path, job.ti_id)
        if run:
            token = self.mint_token(job.ti_id, "workload")
        else:
            token = job.token or self.mint_token(job.ti_id, "execution")
        replayed = self._replay(call, token, awaited)
        if replayed.refreshed_token:
            job.token = replayed.refreshed_token
        elif run:
            job.token = None
        return replayed.answer

    def _replay(self, call: RelayCall, token: str, awaited: bool) -> Replayed:
        """Replay a call. One the worker waits for is replayed once (the Task SDK retries a
        5xx itself); one it does not wait for is retried here on a 5xx, with backoff, for up
        to ``execution_api_timeout`` after the first try (within the relay lease), since
        nobody else will."""
        if awaited:
            return self.api.replay(call, token)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda replayed: replayed.answer.status >= 500),
            stop=(
                tenacity.stop_after_delay(self.settings.execution_api_timeout)
                | tenacity.stop_when_event_set(self.stopping)
            ),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8.0),
            sleep=self.stopping.wait,
            retry_error_callback=lambda state: state.outcome.result(),
        )
        return retrying(self.api.replay, call, token)

    def _callback_data(self, job: Job, seal_key: SealKey) -> RelayAnswer:
        """An executor callback's data, for the worker that claimed it (sealed to it as the
        answer is): the manifest carries it sealed to this side only."""
        if not job.callback_data:
            return error_answer(404, "this job is no callback")
        try:
            data = open_callback_data(
                job.callback_data, seal_key, self.mailbox.callback_context(job.job_id)
            )
        except SealError as exc:
            return error_answer(422, f"the callback's data cannot be opened: {exc}")
        return RelayAnswer(
            status=200, headers={"content-type": "application/json"}, body=encode_body(data)
        )

    def _too_old(self, job: Job, sent_at: float) -> str:
        """Why a request is too old to replay ("" if it is not): sent before its job was
        claimed (a claim is made before any call), or longer ago than the worker waits."""
        assert job.claim
        if sent_at < job.claim.model.claimed_at - CLOCK_SLACK:
            return "was sent before its job was claimed"
        age = time.time() - sent_at
        if age > self.settings.relay_request_max_age:
            return f"was sent {age:.0f} s ago (relay_request_max_age)"
        return ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
