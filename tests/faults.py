"""Proxies on loopback that stand between a client and a real store.

- ``FaultProxy``, a reverse proxy that misbehaves on purpose: it forwards each request to the
  upstream store and, when told to, drops the answer (closes the connection after the store
  applied the request) or answers 503 SlowDown without forwarding. That is how tests
  reproduce "a conditional write won but looks lost" and throttling against SeaweedFS.
- ``ForwardProxy``, a plain HTTP forward proxy (absolute-form request URIs) counting what it
  relays: what an operator's proxy looks like to a worker that must go through one.
"""

from __future__ import annotations

import http.client
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

Match = Callable[[str, str], bool]  # (method, path) -> bool
_HOP_BY_HOP = ("connection", "proxy-connection", "transfer-encoding", "content-length")
SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def fetch(self, host: str, port: int, path: str, body: bytes) -> tuple[int, list, bytes]:
        """Send this request on to ``host:port``; (status, headers, body) of the answer."""
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn.request(self.command, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, response.getheaders(), data

    def reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Served:
    """Start/stop/url for a proxy serving ``handler`` on a free port of 127.0.0.1."""

    def _serve(self, handler: type[_Handler]) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Fault:
    match: Match
    action: str  # "drop" (forward, then drop the answer) or "slowdown" (503 without forwarding)
    times: int = 1


@dataclass
class FaultProxy(_Served):
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, match: Match, action: str, times: int = 1) -> None:
        with self.lock:
            self.faults.append(Fault(match, action, times))

    def _take(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.match(method, path):
                    fault.times -= 1
                    return fault.action
        return None

    def start(self) -> FaultProxy:
        proxy, target = self, urlsplit(self.upstream)

        class Handler(_Handler):
            def _handle(self) -> None:
                body = self.read_body()
                action = proxy._take(self.command, self.path)
                if action == "slowdown":
                    proxy.seen.append((self.command, self.path, 503))
                    self.reply(503, [("Content-Type", "application/xml")], SLOWDOWN)
                    return
                status, headers, data = self.fetch(
                    target.hostname or "127.0.0.1", target.port or 80, self.path, body
                )
                proxy.seen.append((self.command, self.path, status))
                if action == "drop":
                    # The store has applied the request; the client never hears of it.
                    self.close_connection = True
                    return
                self.reply(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._serve(Handler)
        return self


@dataclass
class ForwardProxy(_Served):
    seen: list[tuple[str, str]] = field(default_factory=list)

    def start(self) -> ForwardProxy:
        proxy = self

        class Handler(_Handler):
            def _handle(self) -> None:
                target = urlsplit(self.path)  # absolute URI: http://host:port/path?query
                proxy.seen.append((self.command, self.path))
                path = target.path + (f"?{target.query}" if target.query else "")
                status, headers, data = self.fetch(
                    target.hostname or "127.0.0.1", target.port or 80, path, self.read_body()
                )
                self.reply(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._serve(Handler)
        return self
