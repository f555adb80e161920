"""No object in the bucket stops a reader (security review, item 1).

Anyone who can write to the bucket can write anything: a JWS header of 100,000 nested
brackets, a signed payload whose times overflow a float, a claim whose timestamp is 1e308,
an empty object. Each such item is refused and removed on its own, and the items behind it
are handled as usual. The real reconciler on SeaweedFS, the real worker on the in-memory
store; the fuzz tests drive their read paths with thousands of generated objects.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reconciler_ownership import Scheduler, drain, setup, wait_until
from test_relay_two_reconcilers import TI, claimed_job
from test_worker_claim_order import SCHEDULER, manifest, worker

from edge_mailbox.executor.reconciler import Job
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import SigningKey, sign
from edge_mailbox.signer.keys import b64url
from edge_mailbox.worker.runners import RunnerPool

DEEP = b"[" * 100_000 + b"]" * 100_000


def deep_header_token() -> bytes:
    return f"{b64url(DEEP)}.{b64url(b'{}')}.{b64url(b'x' * 64)}".encode()


def signed_payload(key: SigningKey, payload: dict | bytes) -> bytes:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return sign(raw, key).encode()


def poisons(mailbox: Mailbox, worker_key: SigningKey) -> list[bytes]:
    """Claims that crashed the reconciler before: each signed by a trusted worker key where a
    signature is needed to get that far."""
    bind = {"bucket": mailbox.bucket, "prefix": mailbox.layout.prefix}
    huge = b'{"typ":"claim","iat":1' + b"0" * 400 + b',"exp":1,"bind":{},"body":{}}'
    return [
        deep_header_token(),
        signed_payload(worker_key, huge),
        signed_payload(worker_key, DEEP),
        signed_payload(
            worker_key,
            {"typ": "claim", "iat": time.time(), "exp": 1e308, "bind": bind, "body": {}},
        ),
        signed_payload(worker_key, b'{"typ":"claim","iat":NaN,"exp":NaN,"bind":{},"body":{}}'),
        b"",
    ]


def plant_claim(mailbox: Mailbox, body: bytes) -> str:
    job_id = new_id()
    mailbox.store.put(mailbox.layout.claim(job_id), body)
    mailbox.store.put(mailbox.layout.inbox_claim(job_id), b"")
    return job_id


def test_poisoned_claims_do_not_stop_the_reconciler(seaweed, prefix) -> None:
    scheduler, worker_key, config, settings_, mailbox = setup(seaweed, prefix)
    for body in poisons(mailbox, worker_key):
        plant_claim(mailbox, body)
    with Scheduler(config, settings_) as s:
        honest = claimed_job(mailbox, scheduler, worker_key).job_id  # sorts after the poisons
        s.reconciler.track(Job(job_id=honest, ti_id=TI, queue="default", ti_key="key"))
        mailbox.notify(mailbox.layout.inbox_claim(honest))
        wait_until(
            lambda: not list(mailbox.store.list_all(mailbox.layout.inbox)), "the inbox emptied"
        )
        assert ("running", honest, "w1") in drain(s.events)
        assert len(s.reconciler.rejected) >= len(poisons(mailbox, worker_key))


def test_a_poisoned_relay_request_does_not_stop_its_jobs_later_calls(seaweed, prefix) -> None:
    scheduler, worker_key, config, settings_, mailbox = setup(seaweed, prefix)
    transport = claimed_job(mailbox, scheduler, worker_key)
    bad = mailbox.layout.inbox_request(transport.job_id, new_id())
    mailbox.store.put(bad, deep_header_token())
    finish_key = mailbox.layout.inbox_claim(transport.job_id)
    mailbox.store.put(finish_key, b"")
    with Scheduler(config, settings_) as s:
        s.reconciler.track(Job(job_id=transport.job_id, ti_id=TI, queue="default", ti_key="k"))
        mailbox.ring_inbox()
        wait_until(lambda: not list(mailbox.store.list_all(mailbox.layout.inbox)), "inbox emptied")
        assert [e[0] for e in drain(s.events)] == ["running"]
        assert bad in s.reconciler.rejected


# -- fuzz ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
TIMES = st.one_of(
    st.floats(), st.integers(min_value=-(10**30), max_value=10**30), st.text(max_size=5)
)


@st.composite
def claim_objects(draw: st.DrawFn, key: SigningKey, bind: dict) -> bytes:
    """Bytes at a claim's key: noise, a broken envelope, or a validly signed envelope whose
    payload is anything from random JSON to a nearly valid claim with a fuzzed field."""
    kind = draw(st.sampled_from(["bytes", "envelope", "payload", "claim"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "envelope":
        parts = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
        return b".".join(b64url(p).encode() for p in parts)
    if kind == "payload":
        return signed_payload(key, json.dumps(draw(JSON)).encode())
    body = {
        "schema_version": draw(st.sampled_from(["1.0", "1.9", "2.0", "x"])),
        "job_id": draw(st.sampled_from([bind["job_id"], "0" * 28, ""])),
        "queue": draw(st.text(max_size=5)),
        "worker": "w1",
        "seal_key": draw(st.text(max_size=43)),
        "claimed_at": draw(TIMES),
        "nonce": "n",
        "worker_version": "0.1.0",
        "manifest": draw(st.text(max_size=30)),
    }
    payload = {
        "typ": draw(st.sampled_from(["claim", "job"])),
        "iat": draw(TIMES),
        "exp": draw(TIMES),
        "bind": bind,
        "body": body,
    }
    return signed_payload(key, json.dumps(payload, allow_nan=True).encode())


@pytest.mark.timeout(900)
def test_fuzzed_claims_never_break_the_reconcilers_poll(seaweed, prefix) -> None:
    _, worker_key, config, settings_, mailbox = setup(seaweed, prefix)
    scheduler = Scheduler(config, settings_)  # not started: the test drives poll_once
    bind = {"bucket": mailbox.bucket, "prefix": mailbox.layout.prefix, "job_id": new_id()}

    @settings(
        max_examples=500,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(st.data())
    def check(data: st.DataObject) -> None:
        job_id = new_id()
        body = data.draw(claim_objects(worker_key, {**bind, "job_id": job_id}))
        mailbox.store.put(mailbox.layout.claim(job_id), body)
        mailbox.store.put(mailbox.layout.inbox_claim(job_id), b"")
        scheduler.reconciler.poll_once()  # must not raise
        scheduler.reconciler.flush_deletions()
        assert not list(mailbox.store.list_all(mailbox.layout.inbox)), "a refused item stayed"

    check()
    assert drain(scheduler.events) == []  # nothing believed


@pytest.mark.timeout(900)
def test_fuzzed_manifests_never_break_the_workers_scan(mem_store, tmp_path) -> None:
    mailbox = Mailbox(mem_store)
    w = worker(mem_store, "fuzz", tmp_path)
    w.runners = RunnerPool(lambda spec: 0)
    bind = {"bucket": mailbox.bucket, "prefix": mailbox.layout.prefix, "queue": "q"}

    @settings(
        max_examples=3000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(st.data())
    def check(data: st.DataObject) -> None:
        m = manifest("q", 1, time.time())
        key = mailbox.layout.manifest("q", m.job_id, 1, m.enqueued_at)
        body = data.draw(claim_objects(SCHEDULER, {**bind, "job_id": m.job_id}))
        mailbox.store.put(key, body)
        try:
            assert w.finder.scan("q") is False  # must not raise, and claims nothing
        finally:
            mailbox.store.delete(key)
        assert m.job_id in w.finder.seen

    try:
        check()
    finally:
        w.runners.close()


def test_a_poisoned_manifest_is_skipped_and_the_next_one_claimed(mem_store, tmp_path) -> None:
    mailbox = Mailbox(mem_store)
    now = time.time()
    poisoned = manifest("q", 5, now - 10)
    mailbox.store.put(
        mailbox.layout.manifest("q", poisoned.job_id, 5, poisoned.enqueued_at), deep_header_token()
    )
    good = manifest("q", 1, now)
    mailbox.put_manifest(good, SCHEDULER, ttl=600)
    w = worker(mem_store, "w", tmp_path)
    w.runners = RunnerPool(lambda spec: 0)
    try:
        assert w.finder.scan("q") is True
        assert good.job_id in w.running
    finally:
        w.runners.close()


def test_a_manifest_gone_between_list_and_get_is_no_outage(mem_store, tmp_path) -> None:
    """Another worker claimed it and the scheduler side deleted it: skip it, poll on at the
    usual rate (issue: user-found defects, item 3)."""
    mailbox = Mailbox(mem_store)
    taken = manifest("q", 1, time.time())
    key = mailbox.put_manifest(taken, SCHEDULER, ttl=600)
    w = worker(mem_store, "w", tmp_path)
    w.runners = RunnerPool(lambda spec: 0)
    listed = w.finder.candidates

    def list_then_lose_the_race(queue: str):
        candidates = listed(queue)
        mailbox.store.delete(key)  # claimed by another worker, removed by the scheduler
        return candidates

    w.finder.candidates = list_then_lose_the_race
    try:
        w.finder.rescan = {"q"}
        w._loop_once()
        assert w.interval < 1.0  # not backed off as for an outage
        assert taken.job_id in w.finder.seen
    finally:
        w.runners.close()
