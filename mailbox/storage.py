"""The storage seam: the handful of bucket operations the protocol needs, as one interface.

Everything above this line (Mailbox, the executor, the worker) programs against ``Store``.
Two implementations: ``ObjectStore`` (store.py), the real S3 client, and ``MemoryStore``
(memstore.py), an in-memory bucket with the same semantics for fast unit tests. Both pass
tests/test_store_contract.py, and both map a store's answer to the same typed errors
(errors.py) through the functions below, so that what differs between S3-compatible stores
looks the same from above.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from edge_mailbox.mailbox.accounting import RequestCounter
from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import AlreadyExists, PreconditionFailed, Stale

DEFAULT_MAX_GET_BYTES = 16 * 1024 * 1024
# S3 answers at most this many keys per LIST page, whatever MaxKeys asks for.
MAX_LIST_KEYS = 1000


@dataclass(frozen=True)
class StoredObject:
    key: str
    body: bytes
    etag: str
    last_modified: datetime | None = None


@dataclass(frozen=True)
class Entry:
    """One row of a LIST page: enough to judge liveness or order without a GET."""

    key: str
    etag: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    truncated: bool

    @property
    def last_key(self) -> str | None:
        return self.entries[-1].key if self.entries else None


@runtime_checkable
class Store(Protocol):
    """One bucket under one prefix (``config``), with typed errors and request accounting.

    - ``create`` writes only if the key is absent (If-None-Match: *): AlreadyExists if not.
    - ``replace`` writes only if the object still has ``etag`` (If-Match): Stale if not.
    - ``get_if_changed`` is a conditional GET: None while the object keeps ``etag``.
    - ``delete`` with ``etag`` deletes only an unchanged object (Stale otherwise); without
      it, deleting a missing key succeeds, as in S3.
    - ``get`` raises NotFound for a missing key, ProtocolError for one over ``max_bytes``.

    Every create/replace body must be unique (carry a nonce): that is how a write whose
    answer was lost is recognised as ours when its retry is refused.
    """

    config: StoreConfig
    counter: RequestCounter

    def get(self, key: str, *, max_bytes: int = DEFAULT_MAX_GET_BYTES) -> StoredObject: ...

    def get_if_changed(
        self, key: str, etag: str | None, *, max_bytes: int = DEFAULT_MAX_GET_BYTES
    ) -> StoredObject | None: ...

    def head(self, key: str) -> Entry: ...

    def list_page(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = MAX_LIST_KEYS
    ) -> Page: ...

    def list_all(self, prefix: str, *, start_after: str | None = None) -> Iterator[Entry]: ...

    def put(self, key: str, body: bytes, *, content_type: str = "application/json") -> str: ...

    def create(self, key: str, body: bytes, *, content_type: str = "application/json") -> str: ...

    def replace(
        self, key: str, body: bytes, etag: str, *, content_type: str = "application/json"
    ) -> str: ...

    def delete(self, key: str, *, etag: str | None = None) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> list[str]: ...


def list_all(store: Store, prefix: str, start_after: str | None) -> Iterator[Entry]:
    """Every key under ``prefix``, page by page: one LIST a page."""
    after = start_after
    while True:
        page = store.list_page(prefix, start_after=after)
        yield from page.entries
        if not page.truncated or not page.entries:
            return
        after = page.last_key


def refused_write(status: int, code: str, *, create: bool, key: str) -> PreconditionFailed | None:
    """The typed loss of a conditional PUT the store refused, or None if ``status`` is not
    a refusal. If-Match on a missing key answers 404 on AWS and moto, 412 on SeaweedFS: both
    are Stale. A missing bucket is no refusal: the caller reports it as NotFound."""
    if status == 412:
        return (AlreadyExists if create else Stale)(f"conditional write lost ({code})", key=key)
    if status == 404 and not create and code != "NoSuchBucket":
        return Stale(f"conditional write lost ({code})", key=key)
    return None


def refused_delete(status: int, code: str, *, key: str) -> Stale | None:
    """The typed loss of a conditional DELETE (If-Match), 404 or 412 as for ``replace``."""
    if status in (404, 412) and code != "NoSuchBucket":
        return Stale(f"conditional delete lost ({code})", key=key)
    return None
