"""How the store client behaves when the network or the store misbehaves (real SeaweedFS)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import store_config
from faults import FaultProxy, ForwardProxy

from edge_mailbox.mailbox.config import RetryPolicy
from edge_mailbox.mailbox.errors import AccessDenied, AlreadyExists, NotFound, StoreUnavailable
from edge_mailbox.mailbox.store import ObjectStore


@pytest.fixture
def proxy(seaweed) -> Iterator[FaultProxy]:
    fp = FaultProxy(seaweed.endpoint_url).start()
    yield fp
    fp.stop()


def is_put(key: str):
    return lambda method, path: method == "PUT" and path.split("?")[0].endswith(key)


def test_dropped_answer_to_a_winning_create_is_still_a_win(seaweed, prefix, proxy) -> None:
    store = ObjectStore(store_config(seaweed, prefix, endpoint_url=proxy.url))
    key = f"{prefix}/claims/job-1"
    proxy.add(is_put(key), "drop")
    mine = f'{{"nonce":"{uuid.uuid4().hex}"}}'.encode()
    etag = store.create(key, mine)  # first answer dropped; retry meets our own object (412)
    assert [s for m, p, s in proxy.seen if m == "PUT"] == [200, 412]
    assert store.get(key).body == mine and store.get(key).etag == etag
    # Someone else's object under the same circumstances is a loss, not a win.
    with pytest.raises(AlreadyExists):
        store.create(key, b'{"nonce":"someone-else"}')


def test_throttling_is_retried_with_backoff(seaweed, prefix, proxy) -> None:
    store = ObjectStore(store_config(seaweed, prefix, endpoint_url=proxy.url))
    key = f"{prefix}/throttled"
    proxy.add(is_put(key), "slowdown", times=2)
    store.counter.reset()
    store.put(key, b"{}")
    assert store.counter.snapshot()["PUT"] == 3  # two 503 SlowDown, then success
    assert store.get(key).body == b"{}"


def test_precondition_failure_is_never_retried(seaweed, prefix, proxy) -> None:
    store = ObjectStore(store_config(seaweed, prefix, endpoint_url=proxy.url))
    key = f"{prefix}/taken"
    store.create(key, b'{"n":1}')
    store.counter.reset()
    with pytest.raises(AlreadyExists):
        store.create(key, b'{"n":2}')
    assert store.counter.snapshot() == {"PUT": 1, "GET": 0, "LIST": 0, "HEAD": 0, "DELETE": 0}


def test_unreachable_store_is_a_clear_bounded_error(prefix) -> None:
    from edge_mailbox.mailbox.config import StoreConfig
    from infra.devstore import free_ports

    config = StoreConfig(
        bucket="nowhere",
        prefix=prefix,
        endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}",
        access_key_id="k",
        secret_access_key="s",
        connect_timeout=0.5,
        retry=RetryPolicy(attempts=3, initial_backoff=0.05, max_backoff=0.1, deadline=5),
    )
    store = ObjectStore(config)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        store.get(f"{prefix}/x")
    assert store.counter.snapshot()["GET"] == 3
    assert time.monotonic() - started < 5


def test_wrong_secret_is_access_denied(seaweed, prefix) -> None:
    store = ObjectStore(store_config(seaweed, prefix, secret_access_key="wrong-secret"))
    with pytest.raises(AccessDenied):
        store.put(f"{prefix}/x", b"{}")
    assert store.counter.snapshot()["PUT"] == 1  # a 403 is final


def test_missing_bucket_is_named(seaweed, prefix) -> None:
    store = ObjectStore(store_config(seaweed, prefix, bucket="no-such-bucket-here"))
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        store.get(f"{prefix}/x")


def test_http_proxy_from_settings(seaweed, prefix) -> None:
    """--proxy / [edge_mailbox] proxy: every bucket request goes through the proxy."""
    proxy = ForwardProxy().start()
    try:
        store = ObjectStore(store_config(seaweed, prefix, proxy=proxy.url))
        store.create(f"{prefix}/via-proxy", b'{"n":1}')
        assert store.get(f"{prefix}/via-proxy").body == b'{"n":1}'
        assert len(proxy.seen) == 2 and all(seaweed.endpoint_url in url for _, url in proxy.seen)
    finally:
        proxy.stop()


def test_http_proxy_from_the_standard_environment(seaweed, prefix, monkeypatch) -> None:
    """HTTP_PROXY/HTTPS_PROXY, as every AWS tool honours them, need no setting of ours."""
    proxy = ForwardProxy().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        store = ObjectStore(store_config(seaweed, prefix))
        store.put(f"{prefix}/via-env-proxy", b"{}")
        assert [m for m, _ in proxy.seen] == ["PUT"]
    finally:
        proxy.stop()
