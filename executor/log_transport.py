"""How the log reader reaches the bucket: one LIST of a try's folder, then the chunks.

fsspec/s3fs fetches them concurrently (a page with many chunks loads in one round trip's
time); without s3fs, the ObjectStore fetches them one by one. Both behind one small
interface, so that the reader does not care which.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.models import LogChunk

if TYPE_CHECKING:
    from edge_mailbox.mailbox.config import StoreConfig
    from edge_mailbox.mailbox.protocol import Mailbox

# A signed chunk's size limit; LogShipper's are far smaller (256 KiB of log by default).
MAX_CHUNK_BYTES = LogChunk.MAX_BYTES * 2


class Transport(Protocol):
    """LIST and GET, the two reads the log reader needs."""

    def list(self, prefix: str) -> list[tuple[str, int]]: ...

    def fetch(self, keys: list[str]) -> list[bytes | Exception]: ...


class S3fsTransport:
    """fsspec/s3fs: one recursive LIST (paged), then the chunks fetched concurrently.

    Built on first use, not at import nor in a parent process: s3fs runs an event loop in a
    thread of its own, which a fork (uvicorn workers) would not carry over."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._fs: Any = None
        self._lock = threading.Lock()

    @property
    def fs(self) -> Any:
        with self._lock:
            if self._fs is None:
                import s3fs

                c = self.config
                config_kwargs: dict[str, Any] = {
                    "s3": {"addressing_style": c.addressing_style},
                    "connect_timeout": c.connect_timeout,
                    "read_timeout": c.read_timeout,
                    "max_pool_connections": c.max_pool_connections,
                }
                if c.proxy:
                    config_kwargs["proxies"] = {"http": c.proxy, "https": c.proxy}
                self._fs = s3fs.S3FileSystem(
                    key=c.access_key_id,
                    secret=c.secret_access_key,
                    token=c.session_token,
                    profile=c.profile,
                    endpoint_url=c.endpoint_url,
                    client_kwargs={"region_name": c.region or "us-east-1", "verify": c.verify_tls},
                    config_kwargs=config_kwargs,
                    use_listings_cache=False,  # a running task's folder grows between reads
                    skip_instance_cache=True,
                    max_concurrency=1,  # no HEAD before each GET: chunks are small
                )
            return self._fs

    def _path(self, key: str) -> str:
        return f"{self.config.bucket}/{key}"

    def list(self, prefix: str) -> list[tuple[str, int]]:
        try:
            found = self.fs.find(self._path(prefix), detail=True)
        except Exception as exc:  # botocore, aiohttp and OSError subclasses alike
            raise StoreError(f"LIST failed: {exc}", key=prefix) from exc
        skip = len(self.config.bucket) + 1
        return [(name[skip:], int(info.get("size") or 0)) for name, info in found.items()]

    def fetch(self, keys: list[str]) -> list[bytes | Exception]:
        if not keys:
            return []
        try:
            return list(self.fs.cat_ranges([self._path(k) for k in keys], None, None))
        except Exception as exc:
            raise StoreError(f"GET failed: {exc}") from exc


class StoreTransport:
    """The protocol's own ObjectStore (boto3): for hosts without s3fs. GETs one by one."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.store = mailbox.store

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return [(e.key, e.size) for e in self.store.list_all(prefix)]

    def fetch(self, keys: list[str]) -> list[bytes | Exception]:
        out: list[bytes | Exception] = []
        for key in keys:
            try:
                out.append(self.store.get(key, max_bytes=MAX_CHUNK_BYTES).body)
            except StoreError as exc:
                out.append(exc)
        return out


def default_transport(mailbox: Mailbox) -> Transport:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return StoreTransport(mailbox)
    return S3fsTransport(mailbox.store.config)
