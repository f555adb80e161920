"""Exactly one winner per claim key, with real processes racing on a real SeaweedFS.

moto cannot be used here: its conditional PUT checks and then writes without a lock.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from collections import Counter

import pytest
from conftest import store_config
from faults import FaultProxy

from edge_mailbox.mailbox.config import RetryPolicy, StoreConfig
from edge_mailbox.mailbox.errors import AlreadyExists
from edge_mailbox.mailbox.store import ObjectStore

PROCESSES = 4


def contend(config_json: str, keys: list[str], start, results) -> None:
    """One racer: try to create every key; report (key, outcome, body) for each."""
    store = ObjectStore(StoreConfig.model_validate_json(config_json))
    start.wait(30)
    out = []
    for key in keys:
        mine = f'{{"pid":{os.getpid()},"nonce":"{uuid.uuid4().hex}"}}'.encode()
        try:
            store.create(key, mine)
            out.append((key, "won", mine))
        except AlreadyExists:
            out.append((key, "lost", mine))
        except Exception as exc:  # reported, and then the test fails on it
            out.append((key, f"error: {type(exc).__name__}: {exc}", mine))
    results.put(out)


def race(config: StoreConfig, keys: list[str]) -> list[tuple[str, str, bytes]]:
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=contend, args=(config.model_dump_json(), keys, start, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    start.set()
    outcomes = [row for _ in procs for row in results.get(timeout=600)]
    for p in procs:
        p.join(30)
    return outcomes


def check_one_winner(store: ObjectStore, keys: list[str], outcomes) -> None:
    errors = [row for row in outcomes if row[1] not in ("won", "lost")]
    assert errors == [], errors[:3]
    winners = Counter(key for key, outcome, _ in outcomes if outcome == "won")
    assert all(winners[key] == 1 for key in keys), {k: winners[k] for k in keys if winners[k] != 1}
    assert Counter(key for key, outcome, _ in outcomes if outcome == "lost") == {
        key: PROCESSES - 1 for key in keys
    }
    for key, outcome, body in outcomes:
        if outcome == "won":
            assert store.get(key).body == body  # the winner knows, and the bucket agrees


@pytest.mark.seaweed
def test_four_processes_200_claims_exactly_one_winner_each(seaweed, prefix) -> None:
    config = store_config(seaweed, prefix)
    keys = [f"{prefix}/v1/jobs/{i:04d}/claim.jws" for i in range(200)]
    check_one_winner(ObjectStore(config), keys, race(config, keys))


@pytest.mark.seaweed
def test_dropped_answers_still_leave_one_owner_who_knows(seaweed, prefix) -> None:
    proxy = FaultProxy(seaweed.endpoint_url).start()
    try:
        keys = [f"{prefix}/v1/jobs/{i:04d}/claim.jws" for i in range(5)]
        for key in keys:  # the first answer to a PUT of each key is lost on the way back
            proxy.add(lambda m, p, key=key: m == "PUT" and p.split("?")[0].endswith(key), "drop")
        config = store_config(
            seaweed,
            prefix,
            endpoint_url=proxy.url,
            retry=RetryPolicy(attempts=6, initial_backoff=0.05, max_backoff=0.5, deadline=60),
        )
        outcomes = race(config, keys)
        assert all(f.times == 0 for f in proxy.faults)  # every drop really happened
        check_one_winner(ObjectStore(store_config(seaweed, prefix)), keys, outcomes)
    finally:
        proxy.stop()
