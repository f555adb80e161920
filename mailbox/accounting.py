"""Counts of bucket requests by billing kind, so benchmarks can price a task and an idle hour."""

from __future__ import annotations

import threading
from collections import Counter

KINDS = ("PUT", "GET", "LIST", "HEAD", "DELETE")
# AWS S3 Standard list prices (us-east-1), USD per 1,000 requests. DELETE is free.
PRICE_PER_1000 = {"PUT": 0.005, "LIST": 0.005, "GET": 0.0004, "HEAD": 0.0004, "DELETE": 0.0}


class RequestCounter:
    """Thread-safe tally of HTTP requests sent, one per attempt (each attempt is billed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {kind: self._counts[kind] for kind in KINDS}

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> dict[str, int]:
        with self._lock:
            counts = {kind: self._counts[kind] for kind in KINDS}
            self._counts.clear()
            return counts


def price_usd(counts: dict[str, int]) -> float:
    """What ``counts`` requests cost at S3 Standard list prices."""
    return sum(PRICE_PER_1000[kind] * n / 1000 for kind, n in counts.items())
