"""A reverse proxy on loopback that forwards every request to a store and records it as it was
answered: what one side of the protocol really asked of the bucket, for
tests/test_iam_policies.py to judge against that side's policy document.

It sees every attempt of every process pointed at it (the worker's loop, its job processes,
the scheduler, the api-server, the CLI), which the in-process request counters cannot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from faults import _Handler, _Served


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str  # path and query, as sent
    status: int
    body: bytes = b""  # kept for POST only (a batch delete names its keys there)


@dataclass
class RecordingProxy(_Served):
    upstream: str
    seen: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> RecordingProxy:
        proxy, target = self, urlsplit(self.upstream)

        class Handler(_Handler):
            def _handle(self) -> None:
                body = self.read_body()
                status, headers, data = self.fetch(
                    target.hostname or "127.0.0.1", target.port or 80, self.path, body
                )
                kept = body if self.command == "POST" else b""
                with proxy.lock:
                    proxy.seen.append(Recorded(self.command, self.path, status, kept))
                self.reply(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._serve(Handler)
        return self

    def requests(self) -> list[Recorded]:
        with self.lock:
            return list(self.seen)
