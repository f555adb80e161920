"""An in-memory bucket with S3's semantics: the ``Store`` that unit tests run on.

moto is fast but checks a conditional PUT and then writes without a lock, so it cannot be
trusted where two writers meet. Here every operation runs under one lock: If-None-Match and
If-Match are atomic, as on a real store. What a store answers is modelled too: ETags are the
quoted MD5 of the body (as S3's for a single PUT), LastModified comes from a clock the test
can set (whole seconds, as S3's headers give it), LIST pages hold at most 1,000 keys in
UTF-8 byte order, and a refused conditional write goes through the same mapping to typed
errors as ObjectStore's (storage.py), with 404 or 412 for If-Match on a missing key as the
store being modelled answers it. ``fail_next`` injects a failure into the next call of an
operation, before or after it takes effect (an answer lost after retries ran out).

Tests of races, claims and exactly-once still run on SeaweedFS: this store proves the
callers' logic, not the real store's atomicity.
"""

from __future__ import annotations

import hashlib
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from edge_mailbox.mailbox.accounting import RequestCounter
from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.storage import (
    DEFAULT_MAX_GET_BYTES,
    MAX_LIST_KEYS,
    Entry,
    Page,
    StoredObject,
    list_all,
    refused_delete,
    refused_write,
)

# The operations a fault can be injected into, and the request kind each is billed as.
OPERATIONS = {
    "get": "GET",
    "get_if_changed": "GET",
    "head": "HEAD",
    "list_page": "LIST",
    "put": "PUT",
    "create": "PUT",
    "replace": "PUT",
    "delete": "DELETE",
    "delete_many": "DELETE",
}
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length


@dataclass(frozen=True)
class _Object:
    body: bytes
    etag: str
    last_modified: datetime


@dataclass
class _Fault:
    error: Exception
    times: int
    applied: bool


def etag_of(body: bytes) -> str:
    """S3's ETag of a single-part PUT: the body's MD5 in hex, in double quotes."""
    return f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'


def _bare(etag: str) -> str:
    return etag.removeprefix("W/").strip('"')


class MemoryStore:
    """One in-memory bucket under ``config``'s prefix (a ``Store``).

    ``missing_if_match`` is the status If-Match on a missing key answers: 404 as on AWS and
    moto, 412 as on SeaweedFS (both are Stale to the caller). ``clock`` gives the time in
    seconds since the epoch for LastModified (``time.time`` by default).
    """

    def __init__(
        self,
        config: StoreConfig | None = None,
        *,
        missing_if_match: Literal[404, 412] = 412,
        clock: Callable[[], float] = time.time,
        counter: RequestCounter | None = None,
    ) -> None:
        self.config = config if config is not None else StoreConfig(bucket="memory-bucket")
        self.counter = counter if counter is not None else RequestCounter()
        self.missing_if_match = missing_if_match
        self.clock = clock
        self._lock = threading.Lock()
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # sorted, for LIST
        self._faults: dict[str, list[_Fault]] = {}

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(
        self, operation: str, error: Exception, *, times: int = 1, applied: bool = False
    ) -> None:
        """Raise ``error`` from the next ``times`` calls of ``operation`` (a method's name).

        With ``applied`` a write takes effect before the error is raised: what a caller sees
        when a store applied a request and every answer to it was lost."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {sorted(OPERATIONS)}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.setdefault(operation, []).append(_Fault(error, times, applied))

    def _request(self, operation: str) -> _Fault | None:
        """Count one request. A fault it meets is raised here (the request is not applied)
        or, if ``applied``, returned for the caller to raise once it is. Under the lock."""
        self.counter.add(OPERATIONS[operation])
        queue = self._faults.get(operation)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times == 0:
            queue.pop(0)
            if not queue:
                del self._faults[operation]
        if not fault.applied:
            raise fault.error
        return fault

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str, *, max_bytes: int = DEFAULT_MAX_GET_BYTES) -> StoredObject:
        """Read an object whole. NotFound if absent; ProtocolError if over ``max_bytes``."""
        obj = self._get("get", key, None, max_bytes)
        assert obj is not None
        return obj

    def get_if_changed(
        self, key: str, etag: str | None, *, max_bytes: int = DEFAULT_MAX_GET_BYTES
    ) -> StoredObject | None:
        """Conditional GET: None when the object still has ``etag`` (S3's 304)."""
        return self._get("get_if_changed", key, etag, max_bytes)

    def _get(
        self, operation: str, key: str, etag: str | None, max_bytes: int
    ) -> StoredObject | None:
        with self._lock:
            fault = self._request(operation)
            obj = self._objects.get(key)
        if fault:
            raise fault.error
        if obj is None:
            raise NotFound("no such key", key=key)
        if etag is not None and _bare(etag) == _bare(obj.etag):
            return None
        if len(obj.body) > max_bytes:
            raise ProtocolError(
                f"object is {len(obj.body)} bytes; the limit is {max_bytes}", key=key
            )
        return StoredObject(key, obj.body, obj.etag, obj.last_modified)

    def head(self, key: str) -> Entry:
        with self._lock:
            fault = self._request("head")
            obj = self._objects.get(key)
        if fault:
            raise fault.error
        if obj is None:
            raise NotFound("no such key", key=key)
        return Entry(key, obj.etag, len(obj.body), obj.last_modified)

    def list_page(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = MAX_LIST_KEYS
    ) -> Page:
        """One LIST page of keys under ``prefix`` that sort after ``start_after``."""
        limit = min(max(max_keys, 0), MAX_LIST_KEYS)
        entries: list[Entry] = []
        truncated = False
        with self._lock:
            fault = self._request("list_page")
            # Python orders str by code point, which is UTF-8 byte order: S3's key order.
            index = bisect_left(self._keys, prefix)
            if start_after is not None:
                index = max(index, bisect_right(self._keys, start_after))
            for key in self._keys[index:]:
                if not key.startswith(prefix):
                    break
                if len(entries) == limit:
                    truncated = True
                    break
                obj = self._objects[key]
                entries.append(Entry(key, obj.etag, len(obj.body), obj.last_modified))
        if fault:
            raise fault.error
        return Page(entries, truncated)

    def list_all(self, prefix: str, *, start_after: str | None = None) -> Iterator[Entry]:
        """Every key under ``prefix``, page by page (one LIST a page, as on S3)."""
        return list_all(self, prefix, start_after)

    # -- writes ------------------------------------------------------------------------------

    def put(self, key: str, body: bytes, *, content_type: str = "application/json") -> str:
        """Unconditional write; returns the new ETag."""
        return self._write("put", key, body, None)

    def create(self, key: str, body: bytes, *, content_type: str = "application/json") -> str:
        """Write only if ``key`` is absent; AlreadyExists otherwise."""
        return self._write("create", key, body, "*")

    def replace(
        self, key: str, body: bytes, etag: str, *, content_type: str = "application/json"
    ) -> str:
        """Write only if the object still has ``etag``; Stale if it changed or is gone."""
        return self._write("replace", key, body, etag)

    def _write(self, operation: str, key: str, body: bytes, condition: str | None) -> str:
        _check_key(key)
        with self._lock:
            fault = self._request(operation)
            current = self._objects.get(key)
            refusal = self._refusal(current, condition)
            if refusal is None:
                obj = _Object(bytes(body), etag_of(body), self._now())
                if current is None:
                    self._keys.insert(bisect_right(self._keys, key), key)
                self._objects[key] = obj
        if fault:
            raise fault.error
        if refusal is not None:
            status, code = refusal
            lost = refused_write(status, code, create=condition == "*", key=key)
            assert lost is not None
            raise lost
        return obj.etag

    def _refusal(self, current: _Object | None, condition: str | None) -> tuple[int, str] | None:
        """The (status, code) a store answers a write with ``condition`` with, or None."""
        failed = (412, "PreconditionFailed")
        if condition is None:
            return None
        if condition == "*":
            return failed if current is not None else None
        if current is None:
            return (404, "NoSuchKey") if self.missing_if_match == 404 else failed
        return failed if _bare(current.etag) != _bare(condition) else None

    def delete(self, key: str, *, etag: str | None = None) -> None:
        """Delete ``key``; with ``etag`` only if unchanged (Stale otherwise). Deleting a
        missing key without ``etag`` succeeds, as in S3."""
        with self._lock:
            fault = self._request("delete")
            refusal = self._refusal(self._objects.get(key), etag) if etag else None
            if refusal is None:
                self._remove(key)
        if fault:
            raise fault.error
        if refusal is not None:
            lost = refused_delete(*refusal, key=key)
            assert lost is not None
            raise lost

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Delete keys, one request per 1,000; returns the keys the store refused (none)."""
        pending = list(dict.fromkeys(keys))
        for start in range(0, len(pending), MAX_LIST_KEYS):
            with self._lock:
                fault = self._request("delete_many")
                for key in pending[start : start + MAX_LIST_KEYS]:
                    self._remove(key)
            if fault:
                raise fault.error
        return []

    def _remove(self, key: str) -> None:
        """Forget ``key`` if present. Called under the lock."""
        if self._objects.pop(key, None) is not None:
            del self._keys[bisect_left(self._keys, key)]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(int(self.clock()), tz=UTC)


def _check_key(key: str) -> None:
    """Refuse what S3 refuses with a 400: an empty key or one over 1,024 bytes of UTF-8."""
    if not key or len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise StoreError(f"KeyTooLongError: a key must be 1 to {MAX_KEY_BYTES} bytes", key=key)
