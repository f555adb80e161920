"""Typed outcomes of object-store calls, so that callers branch on meaning, not status codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: something about a bucket request went wrong."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{message} [{key}]" if key else message)


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists (create) or changed or vanished (replace)."""


class AlreadyExists(PreconditionFailed):
    """If-None-Match: * found the key already there."""


class Stale(PreconditionFailed):
    """If-Match failed: the object changed, or is gone (404 on AWS, 412 on SeaweedFS)."""


class ConditionalConflict(StoreError):
    """409 ConditionalRequestConflict: a concurrent conditional write to the same key."""


class NotFound(StoreError):
    """The key (or the bucket) does not exist."""


class AccessDenied(StoreError):
    """403: the credentials are wrong or lack a permission; retrying will not help."""


class StoreUnavailable(StoreError):
    """The store did not answer usefully within the retry budget (5xx, throttling, network)."""


class ProtocolError(Exception):
    """An object in the bucket is malformed, oversized, unknown or of an unsupported version."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{message} [{key}]" if key else message)
