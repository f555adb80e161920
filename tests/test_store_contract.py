"""The store client's contract, checked on moto (fast) and on a real SeaweedFS.

What differs between stores (If-Match on a missing key: 404 on AWS and moto, 412 on
SeaweedFS) must look the same from above: ``Stale``.
"""

from __future__ import annotations

import uuid

import pytest

from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, ProtocolError, Stale
from edge_mailbox.mailbox.store import ObjectStore


@pytest.fixture(params=["moto", "seaweed"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    name = "moto_store" if request.param == "moto" else "weed_store"
    return request.getfixturevalue(name)


def body(tag: str = "") -> bytes:
    """Unique bodies, as the protocol requires of every conditional write."""
    return f'{{"tag":"{tag}","nonce":"{uuid.uuid4().hex}"}}'.encode()


def test_create_only_if_absent(store: ObjectStore) -> None:
    key = f"{store.config.prefix}/claims/a"
    first = body("first")
    etag = store.create(key, first)
    with pytest.raises(AlreadyExists):
        store.create(key, body("second"))
    got = store.get(key)
    assert got.body == first and got.etag == etag


def test_replace_only_if_unchanged(store: ObjectStore) -> None:
    key = f"{store.config.prefix}/cas"
    etag1 = store.create(key, body("v1"))
    etag2 = store.replace(key, body("v2"), etag1)
    assert etag2 != etag1
    with pytest.raises(Stale):
        store.replace(key, body("v3"), etag1)  # stale etag
    assert b'"v2"' in store.get(key).body


def test_replace_missing_key_is_stale(store: ObjectStore) -> None:
    etag = store.put(f"{store.config.prefix}/elsewhere", body())
    with pytest.raises(Stale):
        store.replace(f"{store.config.prefix}/missing", body(), etag)


def test_conditional_get_answers_not_modified(store: ObjectStore) -> None:
    key = f"{store.config.prefix}/marker"
    etag = store.put(key, body("m1"))
    before = store.counter.snapshot()["GET"]
    assert store.get_if_changed(key, etag) is None
    assert store.counter.snapshot()["GET"] == before + 1
    store.put(key, body("m2"))
    changed = store.get_if_changed(key, etag)
    assert changed is not None and b'"m2"' in changed.body


def test_get_missing_and_oversized(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get(f"{store.config.prefix}/nope")
    key = f"{store.config.prefix}/big"
    store.put(key, b"x" * 5000)
    with pytest.raises(ProtocolError, match="limit"):
        store.get(key, max_bytes=4096)


def test_conditional_delete(store: ObjectStore) -> None:
    key = f"{store.config.prefix}/del"
    etag = store.put(key, body("a"))
    store.put(key, body("b"))
    with pytest.raises(Stale):
        store.delete(key, etag=etag)
    current = store.get(key).etag
    store.delete(key, etag=current)
    with pytest.raises(NotFound):
        store.get(key)
    store.delete(key)  # deleting a missing key unconditionally is fine, as in S3


def test_list_page_after_key_in_order(store: ObjectStore) -> None:
    root = f"{store.config.prefix}/list/"
    keys = [f"{root}{i:03d}" for i in range(25)]
    for key in reversed(keys):
        store.put(key, body())
    page = store.list_page(root, max_keys=10)
    assert [e.key for e in page.entries] == keys[:10] and page.truncated
    page2 = store.list_page(root, start_after=page.last_key, max_keys=10)
    assert [e.key for e in page2.entries] == keys[10:20]
    assert all(e.size > 0 and e.etag and e.last_modified for e in page2.entries)
    assert [e.key for e in store.list_all(root)] == keys


def test_delete_many(store: ObjectStore) -> None:
    root = f"{store.config.prefix}/many/"
    keys = [f"{root}{i}" for i in range(7)]
    for key in keys:
        store.put(key, body())
    assert store.delete_many([*keys, f"{root}absent"]) == []
    assert store.list_page(root).entries == []


def test_requests_are_counted_by_kind(store: ObjectStore) -> None:
    store.counter.reset()
    key = f"{store.config.prefix}/count"
    store.create(key, body())
    store.get(key)
    store.list_page(f"{store.config.prefix}/")
    store.head(key)
    store.delete(key)
    assert store.counter.snapshot() == {"PUT": 1, "GET": 1, "LIST": 1, "HEAD": 1, "DELETE": 1}
