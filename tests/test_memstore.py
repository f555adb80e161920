"""What the in-memory store adds to the contract it shares with the S3 client
(test_store_contract.py): atomicity under threads, the store it models, a settable clock,
S3's page size, and injected faults."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, Stale, StoreError, StoreUnavailable
from edge_mailbox.mailbox.memstore import MemoryStore

CONFIG = StoreConfig(bucket="memory-bucket", prefix="p")


def test_conditional_writes_are_atomic_across_threads() -> None:
    store = MemoryStore(CONFIG)
    threads, rounds = 8, 200
    store.put("p/n", b"0")
    wins: list[int] = []
    start = threading.Barrier(threads)

    def bump(n: int) -> None:
        start.wait()
        try:
            store.create("p/claim", f"{n}".encode())
            wins.append(n)
        except AlreadyExists:
            pass
        done = 0
        while done < rounds:  # compare-and-swap increments: none may be lost
            current = store.get("p/n")
            try:
                store.replace("p/n", str(int(current.body) + 1).encode(), current.etag)
                done += 1
            except Stale:
                continue

    workers = [threading.Thread(target=bump, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert len(wins) == 1 and store.get("p/claim").body == str(wins[0]).encode()
    assert int(store.get("p/n").body) == threads * rounds


@pytest.mark.parametrize(("status", "code"), [(404, "NoSuchKey"), (412, "PreconditionFailed")])
def test_if_match_on_a_missing_key_answers_as_the_modelled_store(status: int, code: str) -> None:
    store = MemoryStore(CONFIG, missing_if_match=status)
    with pytest.raises(Stale, match=code):
        store.replace("p/missing", b"{}", '"abc"')
    with pytest.raises(Stale, match=code):
        store.delete("p/missing", etag='"abc"')
    store.put("p/there", b"1")
    with pytest.raises(Stale, match="PreconditionFailed"):
        store.replace("p/there", b"2", '"abc"')  # a changed object is 412 everywhere


def test_last_modified_comes_from_the_clock_in_whole_seconds() -> None:
    now = [1_700_000_000.75]
    store = MemoryStore(CONFIG, clock=lambda: now[0])
    store.put("p/a", b"1")
    now[0] += 90
    store.put("p/b", b"2")
    expected = datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert store.get("p/a").last_modified == store.head("p/a").last_modified == expected
    stamps = [e.last_modified.timestamp() for e in store.list_page("p/").entries]
    assert stamps == [1_700_000_000, 1_700_000_090]


def test_a_page_holds_at_most_a_thousand_keys() -> None:
    store = MemoryStore(CONFIG)
    keys = [f"p/k/{i:05d}" for i in range(1001)]
    for key in keys:
        store.put(key, b"")
    store.counter.reset()
    page = store.list_page("p/k/", max_keys=5000)
    assert len(page.entries) == 1000 and page.truncated and page.last_key == keys[999]
    assert [e.key for e in store.list_all("p/k/")] == keys
    assert store.counter.snapshot()["LIST"] == 3
    assert store.delete_many(keys) == [] and store.counter.snapshot()["DELETE"] == 2
    assert store.list_page("p/").entries == []


def test_an_injected_fault_fails_the_call_and_writes_nothing() -> None:
    store = MemoryStore(CONFIG)
    store.fail_next("create", StoreUnavailable("injected"), times=2)
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="injected"):
            store.create("p/claim", b"1")
    with pytest.raises(NotFound):
        store.get("p/claim")
    store.create("p/claim", b"1")  # the fault is spent
    assert store.counter.snapshot()["PUT"] == 3  # each refused attempt was a request


def test_an_applied_fault_writes_and_still_fails() -> None:
    """A write the store applied while every answer to it was lost."""
    store = MemoryStore(CONFIG)
    store.fail_next("create", StoreUnavailable("answer lost"), applied=True)
    with pytest.raises(StoreUnavailable):
        store.create("p/claim", b"mine")
    assert store.get("p/claim").body == b"mine"
    store.fail_next("delete_many", StoreUnavailable("answer lost"), applied=True)
    with pytest.raises(StoreUnavailable):
        store.delete_many(["p/claim"])
    assert store.list_page("p/").entries == []


def test_faults_are_per_operation_and_checked() -> None:
    store = MemoryStore(CONFIG)
    store.fail_next("get_if_changed", StoreUnavailable("marker"))
    store.put("p/m", b"1")
    assert store.get("p/m").body == b"1"  # a plain GET is another operation
    with pytest.raises(StoreUnavailable):
        store.get_if_changed("p/m", None)
    with pytest.raises(ValueError, match="unknown operation"):
        store.fail_next("GET", StoreUnavailable("x"))


def test_keys_s3_refuses_are_refused() -> None:
    store = MemoryStore(CONFIG)
    with pytest.raises(StoreError, match="KeyTooLong"):
        store.put("p/" + "é" * 512, b"")
    with pytest.raises(StoreError, match="KeyTooLong"):
        store.create("", b"")
