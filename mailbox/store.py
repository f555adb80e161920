"""The object-store client: the S3 implementation of ``storage.Store``, over boto3.

- ``create`` writes only if the key is absent (If-None-Match: *): how a job is claimed.
- ``replace`` writes only if the object is unchanged (If-Match: etag): compare-and-swap.
- ``get_if_changed`` is a conditional GET (If-None-Match: etag) that answers 304 cheaply.
- ``list_page`` reads one LIST page after a key; ``delete``/``delete_many`` clean up.

Single-object requests go out through ``DirectObjects`` (s3direct.py): signed by botocore,
without boto3's ~1.3 ms of CPU per call. LIST, batch deletes and bucket calls use boto3.

Transient failures (throttling, 5xx, network) are retried here with jittered exponential
backoff; botocore's own retries are off so that every attempt is counted and none hides a
412. A conditional write can succeed and look lost when its answer is dropped and the retry
meets our own object: every create/replace body must be unique (carry a nonce), and after an
ambiguous attempt a 412 is settled by reading the key back and comparing bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from edge_mailbox.mailbox.accounting import RequestCounter
from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import (
    AccessDenied,
    ConditionalConflict,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    StoreError,
    StoreUnavailable,
)
from edge_mailbox.mailbox.s3direct import DirectObjects, last_modified
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

log = logging.getLogger(__name__)
T = TypeVar("T")

_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
USER_AGENT = "edge-mailbox"


class _Transient(Exception):
    """Internal: an attempt failed in a way worth retrying; it may have been applied."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(str(cause))


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


_sessions: dict[tuple[str | None, ...], boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def _session(config: StoreConfig) -> boto3.session.Session:
    """One boto3 session per set of credentials, kept for the process's life.

    A session caches the S3 service model: a second client from it costs ~7 ms of CPU
    instead of ~95 ms. Forked job processes inherit the cache and make their own client
    (with their own connections) almost for free."""
    key = (
        config.access_key_id,
        config.secret_access_key,
        config.session_token,
        config.profile,
        config.region,
    )
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = boto3.session.Session(
                aws_access_key_id=config.access_key_id,
                aws_secret_access_key=config.secret_access_key,
                aws_session_token=config.session_token,
                profile_name=config.profile,
                region_name=config.region,
            )
        return _sessions[key]


def make_boto_client(config: StoreConfig) -> Any:
    """A boto3 S3 client for ``config``: endpoint, region, proxy, path style, credentials."""
    session = _session(config)
    boto_config = Config(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_pool_connections=config.max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": config.addressing_style},
        proxies={"http": config.proxy, "https": config.proxy} if config.proxy else None,
        # Checksums only where S3 demands them: S3-compatible stores differ in support.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra=USER_AGENT,
    )
    with _sessions_lock:  # creating clients from one session is not thread-safe
        return session.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region or "us-east-1",
            verify=config.verify_tls,
            config=boto_config,
        )


class ObjectStore:
    """One S3 bucket (a ``Store``), with typed errors, bounded retries and accounting."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        client: Any = None,
        counter: RequestCounter | None = None,
    ) -> None:
        self.config = config
        self.bucket = config.bucket
        self.client = client if client is not None else make_boto_client(config)
        self.objects = DirectObjects(
            self.client, self.bucket, _session(config).get_credentials(), USER_AGENT
        )
        self.counter = counter if counter is not None else RequestCounter()

    # -- retry machinery -------------------------------------------------------------------

    def _attempt(self, kind: str, call: Callable[[], T], key: str | None) -> T:
        """One HTTP attempt: count it, and sort its failure into final or transient."""
        self.counter.add(kind)
        try:
            return call()
        except ClientError as err:
            status, code = _status(err), _code(err)
            if status >= 500 or status == 429 or code in _THROTTLE_CODES:
                raise _Transient(err) from err
            if status == 409 and code == "ConditionalRequestConflict":
                # Not applied; AWS asks for a retry, which then meets the winner's object.
                raise _Transient(ConditionalConflict(f"{kind}: {code}", key=key)) from err
            raise
        except (BotoConnectionError, BotoCoreError) as err:
            # Connection refused/reset, timeouts, a connection closed before the answer: the
            # request may or may not have been applied, and is worth another attempt.
            if isinstance(err, (BotoConnectionError, HTTPClientError)):
                raise _Transient(err) from err
            raise StoreError(f"{kind} failed: {err}", key=key) from err

    def _retrying(self, kind: str, key: str | None) -> Retrying:
        policy = self.config.retry

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "bucket %s %s failed (%s); retry %d in %.2f s",
                kind,
                key or "",
                exc,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0,
            )

        return Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.deadline),
            wait=wait_random_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _run(self, kind: str, call: Callable[[], T], key: str | None = None) -> tuple[T, bool]:
        """Run ``call`` with retries. Returns (result, ambiguous): ambiguous is True when an
        earlier attempt failed in a way that may have applied it on the server."""
        ambiguous = False
        try:
            for attempt in self._retrying(kind, key):
                with attempt:
                    try:
                        return self._attempt(kind, call, key), ambiguous
                    except _Transient as exc:
                        if not isinstance(exc.cause, ConditionalConflict):
                            ambiguous = True
                        raise
                    except ClientError as err:
                        err.edge_mailbox_ambiguous = ambiguous  # type: ignore[attr-defined]
                        raise
        except _Transient as exc:
            raise StoreUnavailable(
                f"bucket {self.bucket!r} unavailable for {kind}: {exc.cause}", key=key
            ) from exc.cause
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, err: ClientError, key: str | None) -> StoreError:
        status, code = _status(err), _code(err)
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return AccessDenied(f"access denied to bucket {self.bucket!r} ({code})", key=key)
        if code == "NoSuchBucket":
            return NotFound(f"bucket {self.bucket!r} does not exist", key=key)
        if status == 404 or code in ("NoSuchKey", "NotFound"):
            return NotFound("no such key", key=key)
        if status == 412:
            return PreconditionFailed(f"precondition failed ({code})", key=key)
        return StoreError(f"{code or status}: {err}", key=key)

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, *, max_bytes: int = DEFAULT_MAX_GET_BYTES) -> StoredObject:
        """Read an object whole. NotFound if absent; ProtocolError if over ``max_bytes``."""
        obj = self._get(key, None, max_bytes)
        assert obj is not None
        return obj

    def get_if_changed(
        self, key: str, etag: str | None, *, max_bytes: int = DEFAULT_MAX_GET_BYTES
    ) -> StoredObject | None:
        """Conditional GET: None when the object still has ``etag`` (a cheap 304)."""
        return self._get(key, etag, max_bytes)

    def _get(self, key: str, etag: str | None, max_bytes: int) -> StoredObject | None:
        def call() -> StoredObject | None:
            status, headers, body = self.objects.get(key, if_none_match=etag, max_bytes=max_bytes)
            if status == 304:
                return None
            size = int(headers.get("content-length") or 0)
            if size > max_bytes:
                raise ProtocolError(f"object is {size} bytes; the limit is {max_bytes}", key=key)
            if len(body) > max_bytes:
                raise ProtocolError(f"object exceeds the limit of {max_bytes} bytes", key=key)
            return StoredObject(key, body, headers.get("etag", ""), last_modified(headers))

        try:
            return self._run("GET", call, key)[0]
        except ClientError as err:
            raise self._translate(err, key) from err

    def head(self, key: str) -> Entry:
        def call() -> Entry:
            r = self.objects.head(key)
            return Entry(key, r["ETag"], r["ContentLength"], r["LastModified"])

        try:
            return self._run("HEAD", call, key)[0]
        except ClientError as err:
            raise self._translate(err, key) from err

    def list_page(
        self, prefix: str, *, start_after: str | None = None, max_keys: int = MAX_LIST_KEYS
    ) -> Page:
        """One LIST page of keys under ``prefix`` that sort after ``start_after``."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after:
            params["StartAfter"] = start_after

        def call() -> Page:
            r = self.client.list_objects_v2(**params)
            entries = [
                Entry(o["Key"], o.get("ETag", ""), int(o.get("Size", 0)), o["LastModified"])
                for o in r.get("Contents", [])
            ]
            return Page(entries, bool(r.get("IsTruncated")))

        try:
            return self._run("LIST", call, prefix)[0]
        except ClientError as err:
            raise self._translate(err, prefix) from err

    def list_all(self, prefix: str, *, start_after: str | None = None) -> Iterator[Entry]:
        """Every key under ``prefix``, page by page. Not for hot paths: one LIST a page."""
        return list_all(self, prefix, start_after)

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, body: bytes, *, content_type: str = "application/json") -> str:
        """Unconditional write; returns the new ETag."""

        def call() -> str:
            return self.objects.put(key, body, content_type, {})

        try:
            return self._run("PUT", call, key)[0]
        except ClientError as err:
            raise self._translate(err, key) from err

    def create(self, key: str, body: bytes, *, content_type: str = "application/json") -> str:
        """Write only if ``key`` is absent. AlreadyExists if someone else's object is there.

        ``body`` must be unique to this writer (a nonce inside): that is how an ambiguous
        outcome (our write applied, its answer lost, the retry refused) is recognised as ours.
        """
        return self._conditional_put(key, body, content_type, {"If-None-Match": "*"})

    def replace(
        self, key: str, body: bytes, etag: str, *, content_type: str = "application/json"
    ) -> str:
        """Write only if the object still has ``etag``. Stale if it changed or is gone."""
        return self._conditional_put(key, body, content_type, {"If-Match": etag})

    def _conditional_put(
        self,
        key: str,
        body: bytes,
        content_type: str,
        condition: dict[str, str],
    ) -> str:
        def call() -> str:
            return self.objects.put(key, body, content_type, condition)

        try:
            return self._run("PUT", call, key)[0]
        except ClientError as err:
            status = _status(err)
            create = "If-None-Match" in condition
            lost = refused_write(status, _code(err) or str(status), create=create, key=key)
            if lost is None:
                raise self._translate(err, key) from err
            if getattr(err, "edge_mailbox_ambiguous", False):
                mine = self._read_back(key, body)
                if mine is not None:
                    log.info("conditional write to %s applied on an earlier attempt", key)
                    return mine
            raise lost from err

    def _read_back(self, key: str, body: bytes) -> str | None:
        """The ETag of ``key`` if it holds exactly ``body``, else None."""
        try:
            current = self.get(key, max_bytes=max(len(body), 1))
        except (NotFound, ProtocolError):
            return None
        return current.etag if current.body == body else None

    def delete(self, key: str, *, etag: str | None = None) -> None:
        """Delete ``key``; with ``etag`` only if unchanged (Stale otherwise).

        Deleting a missing key without ``etag`` succeeds, as in S3.
        """
        try:
            self._run("DELETE", lambda: self.objects.delete(key, if_match=etag), key)
        except ClientError as err:
            status = _status(err)
            lost = refused_delete(status, _code(err) or str(status), key=key) if etag else None
            if lost is not None:
                if getattr(err, "edge_mailbox_ambiguous", False):
                    return  # an earlier attempt deleted it: the caller's intent holds
                raise lost from err
            if status == 404 and _code(err) != "NoSuchBucket":
                return
            raise self._translate(err, key) from err

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Delete keys in batches of 1,000; returns the keys the store refused to delete."""
        pending = list(dict.fromkeys(keys))
        failed: list[str] = []
        for start in range(0, len(pending), 1000):
            batch = pending[start : start + 1000]
            request = {"Objects": [{"Key": k} for k in batch], "Quiet": True}

            def call(request: dict[str, Any] = request) -> dict[str, Any]:
                return self.client.delete_objects(Bucket=self.bucket, Delete=request)

            try:
                response = self._run("DELETE", call, batch[0])[0]
            except ClientError as err:
                raise self._translate(err, batch[0]) from err
            for error in response.get("Errors", []):
                if error.get("Code") != "NoSuchKey":
                    failed.append(error["Key"])
        return failed

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (dev stores); an existing one is left alone."""
        try:
            self._run("HEAD", lambda: self.client.head_bucket(Bucket=self.bucket), None)
            return
        except ClientError as err:
            if _status(err) not in (404, 400):
                raise self._translate(err, None) from err
        try:
            self._run("PUT", lambda: self.client.create_bucket(Bucket=self.bucket), None)
        except ClientError as err:
            if _code(err) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(err, None) from err
