"""The storage seam's contract (storage.Store), checked on the S3 client over moto (fast)
and over a real SeaweedFS, and on the in-memory store as it models each (404 or 412 to
If-Match on a missing key). The unit tests that run on the in-memory store are worth what
this contract holds it to.

What differs between stores (If-Match on a missing key: 404 on AWS and moto, 412 on
SeaweedFS) must look the same from above: ``Stale``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, ProtocolError, Stale
from edge_mailbox.mailbox.memstore import MemoryStore, etag_of
from edge_mailbox.mailbox.storage import Store


@pytest.fixture(
    params=[
        "moto",
        pytest.param("seaweed", marks=pytest.mark.seaweed),
        "memory-404",
        "memory-412",
    ]
)
def store(request: pytest.FixtureRequest, prefix: str) -> Store:
    if request.param.startswith("memory-"):
        status = 404 if request.param == "memory-404" else 412
        config = StoreConfig(bucket="memory-bucket", prefix=prefix)
        return MemoryStore(config, missing_if_match=status)
    name = "moto_store" if request.param == "moto" else "weed_store"
    return request.getfixturevalue(name)


def body(tag: str = "") -> bytes:
    """Unique bodies, as the protocol requires of every conditional write."""
    return f'{{"tag":"{tag}","nonce":"{uuid.uuid4().hex}"}}'.encode()


def test_create_only_if_absent(store: Store) -> None:
    key = f"{store.config.prefix}/claims/a"
    first = body("first")
    etag = store.create(key, first)
    with pytest.raises(AlreadyExists):
        store.create(key, body("second"))
    got = store.get(key)
    assert got.body == first and got.etag == etag


def test_replace_only_if_unchanged(store: Store) -> None:
    key = f"{store.config.prefix}/cas"
    etag1 = store.create(key, body("v1"))
    etag2 = store.replace(key, body("v2"), etag1)
    assert etag2 != etag1
    with pytest.raises(Stale):
        store.replace(key, body("v3"), etag1)  # stale etag
    assert b'"v2"' in store.get(key).body


def test_replace_missing_key_is_stale(store: Store) -> None:
    etag = store.put(f"{store.config.prefix}/elsewhere", body())
    with pytest.raises(Stale):
        store.replace(f"{store.config.prefix}/missing", body(), etag)


def test_conditional_get_answers_not_modified(store: Store) -> None:
    key = f"{store.config.prefix}/marker"
    etag = store.put(key, body("m1"))
    before = store.counter.snapshot()["GET"]
    assert store.get_if_changed(key, etag) is None
    assert store.counter.snapshot()["GET"] == before + 1
    store.put(key, body("m2"))
    changed = store.get_if_changed(key, etag)
    assert changed is not None and b'"m2"' in changed.body


def test_get_missing_and_oversized(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get(f"{store.config.prefix}/nope")
    key = f"{store.config.prefix}/big"
    store.put(key, b"x" * 5000)
    with pytest.raises(ProtocolError, match="limit"):
        store.get(key, max_bytes=4096)


def test_conditional_delete(store: Store) -> None:
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


def test_list_page_after_key_in_order(store: Store) -> None:
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


def test_delete_many(store: Store) -> None:
    root = f"{store.config.prefix}/many/"
    keys = [f"{root}{i}" for i in range(7)]
    for key in keys:
        store.put(key, body())
    assert store.delete_many([*keys, f"{root}absent"]) == []
    assert store.list_page(root).entries == []


def test_requests_are_counted_by_kind(store: Store) -> None:
    store.counter.reset()
    key = f"{store.config.prefix}/count"
    store.create(key, body())
    store.get(key)
    store.list_page(f"{store.config.prefix}/")
    store.head(key)
    store.delete(key)
    assert store.counter.snapshot() == {"PUT": 1, "GET": 1, "LIST": 1, "HEAD": 1, "DELETE": 1}


def test_the_store_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


def test_head_get_and_list_agree(store: Store) -> None:
    root = f"{store.config.prefix}/agree/"
    data = body("agree")
    etag = store.put(f"{root}x", data)
    got, head = store.get(f"{root}x"), store.head(f"{root}x")
    [listed] = store.list_page(root).entries
    assert got.etag == head.etag == listed.etag == etag
    assert head.size == listed.size == len(data) and got.body == data
    assert got.last_modified is not None
    stamps = [got.last_modified.timestamp(), head.last_modified.timestamp()]
    stamps.append(listed.last_modified.timestamp())
    assert max(stamps) - min(stamps) < 1  # headers give whole seconds, LIST may give millis
    assert abs(stamps[0] - time.time()) < 60


def test_etags_change_with_the_body(store: Store) -> None:
    key = f"{store.config.prefix}/etags"
    first, second = body("1"), body("2")
    etag1 = store.put(key, first)
    etag2 = store.put(key, second)
    assert etag1 != etag2 and store.get(key).etag == etag2 == etag_of(second)
    assert store.put(key, first) == etag1  # an ETag is the body's (MD5), not a version


def test_listing_stays_in_its_prefix_and_after_its_start(store: Store) -> None:
    p = store.config.prefix
    inside = [f"{p}/a/1", f"{p}/a/2", f"{p}/a/3"]
    for key in [f"{p}/a", f"{p}/a0", f"{p}/a.b", *inside, f"{p}/b/1"]:
        store.put(key, body())
    assert [e.key for e in store.list_page(f"{p}/a/").entries] == inside
    assert [e.key for e in store.list_page(f"{p}/a/", start_after=f"{p}/").entries] == inside
    after = store.list_page(f"{p}/a/", start_after=inside[0])
    assert [e.key for e in after.entries] == inside[1:] and not after.truncated
    past = store.list_page(f"{p}/a/", start_after=f"{p}/a/9")
    assert past.entries == [] and not past.truncated and past.last_key is None
    full = store.list_page(f"{p}/a/", max_keys=3)
    assert [e.key for e in full.entries] == inside and not full.truncated


def test_conditional_get_of_a_missing_key_is_not_found(store: Store) -> None:
    key = f"{store.config.prefix}/never"
    with pytest.raises(NotFound):
        store.get_if_changed(key, None)
    with pytest.raises(NotFound):
        store.get_if_changed(key, '"0123456789abcdef0123456789abcdef"')
    with pytest.raises(NotFound):
        store.head(key)


def test_a_deleted_key_is_stale_to_conditions_and_free_to_create(store: Store) -> None:
    key = f"{store.config.prefix}/gone"
    etag = store.create(key, body("first"))
    store.delete(key)
    with pytest.raises(Stale):
        store.replace(key, body("late"), etag)
    with pytest.raises(Stale):
        store.delete(key, etag=etag)
    with pytest.raises(NotFound):
        store.get(key)  # the refused replace wrote nothing
    again = body("again")
    assert store.create(key, again) == store.get(key).etag and store.get(key).body == again
