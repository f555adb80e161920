"""MailboxExecutor's metrics, through Airflow's own Stats (statsd or OpenTelemetry, as
``[metrics]`` configures): names under ``edge_mailbox.``.

- ``edge_mailbox.queued_jobs`` (gauge, tag ``queue``): jobs written and not claimed yet
- ``edge_mailbox.claim_latency`` (timer): from a manifest's enqueue to its claim
- ``edge_mailbox.relay_latency`` (timer): from a worker's relay request to our answer
- ``edge_mailbox.live_workers`` (gauge): workers heard from within ``worker_timeout``
- ``edge_mailbox.lost_workers``, ``edge_mailbox.refused`` (counters)
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)
MAX_TIMING_SECONDS = 30 * 86400.0

try:  # the same module Airflow's BaseExecutor reports through
    from airflow._shared.observability.metrics import stats as _stats
except ImportError:  # pragma: no cover - without Airflow there is nowhere to report to
    _stats = None


def _safe(call: str, *args: Any, **kwargs: Any) -> None:
    if _stats is None:
        return
    try:
        getattr(_stats, call)(*args, **kwargs)
    except Exception as exc:  # metrics must never break the executor
        log.debug("metric %s not sent: %s", args[0] if args else call, exc)


def gauge(name: str, value: float, **tags: str) -> None:
    _safe("gauge", f"edge_mailbox.{name}", value, tags=tags or None)


def timing(name: str, seconds: float, **tags: str) -> None:
    try:  # a time computed from a bucket object: never trust it to fit a timedelta
        elapsed = timedelta(seconds=min(max(seconds, 0.0), MAX_TIMING_SECONDS))
    except (OverflowError, ValueError, TypeError):
        return
    _safe("timing", f"edge_mailbox.{name}", elapsed, tags=tags or None)


def incr(name: str, **tags: str) -> None:
    _safe("incr", f"edge_mailbox.{name}", tags=tags or None)
