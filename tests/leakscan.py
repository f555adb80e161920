"""A scanner that reads every object in the bucket and looks for secrets in clear.

"In clear" includes one layer of encoding that is not encryption: the payloads of JWS
envelopes (base64url JSON, possibly nested) are decoded and searched too. Sealed data
(HPKE ciphertext) is what may remain.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass, field

from edge_mailbox.mailbox.errors import NotFound, StoreError
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer.keys import b64url_decode

JWS = re.compile(rb"[A-Za-z0-9_-]{8,}\.([A-Za-z0-9_-]{4,})\.[A-Za-z0-9_-]{16,}")
# Airflow's task tokens are HS512 JWTs (or RS/EdDSA with a key file): their header starts so.
AIRFLOW_JWT_HEADERS = (b'{"alg":"HS512"', b'"typ":"JWT"')


def readable_layers(data: bytes, depth: int = 0) -> list[bytes]:
    layers = [data]
    if depth > 3:
        return layers
    for match in JWS.finditer(data):
        segments = match.group(0).split(b".")
        for segment in segments[:2]:
            try:
                decoded = b64url_decode(segment.decode())
            except ValueError:
                continue
            layers.extend(readable_layers(decoded, depth + 1))
    return layers


def leaks_in(data: bytes, secrets: list[bytes]) -> list[str]:
    found = []
    for layer in readable_layers(data):
        found += [f"secret {s[:6]!r}..." for s in secrets if s in layer]
        found += [f"token header {h!r}" for h in AIRFLOW_JWT_HEADERS if h in layer]
    return found


@dataclass
class LeakScanner:
    store: ObjectStore
    prefix: str
    secrets: list[bytes]
    leaks: list[tuple[str, str]] = field(default_factory=list)
    scanned: set[tuple[str, str]] = field(default_factory=set)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def scan_once(self) -> None:
        for entry in list(self.store.list_all(self.prefix)):
            if (entry.key, entry.etag) in self.scanned:
                continue
            try:
                body = self.store.get(entry.key, max_bytes=64 * 1024 * 1024).body
            except NotFound:
                continue  # short-lived inbox object, already consumed
            self.scanned.add((entry.key, entry.etag))
            for leak in leaks_in(body, self.secrets):
                self.leaks.append((entry.key, leak))

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(StoreError):
                self.scan_once()
            self.stop_event.wait(0.05)

    def start(self) -> LeakScanner:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        self.scan_once()  # and a last full pass
