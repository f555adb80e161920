"""What the dashboard's routes work with, loaded once per api-server process, on the first
request that needs it (not at import: Airflow loads plugins in every process, and a broken
``[edge_mailbox]`` section must not stop the api-server from starting).

A broken configuration is not remembered: the next request tries again and, until it is
fixed, each gets a 503 that names the option and the rule.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edge_mailbox.executor.fleet_control import FleetControl
from edge_mailbox.executor.fleet_view import Fleet, SnapshotCache, read_fleet
from edge_mailbox.executor.settings import ExecutorSettings
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing

# A snapshot not rewritten for this many intervals (and at least STALE_MIN seconds) is
# taken to be of a scheduler that stopped: its jobs and queues are not shown.
STALE_INTERVALS = 3
STALE_MIN = 120.0


class ConfigProblem(RuntimeError):
    """The [edge_mailbox] section, the keys it names or the credentials are unusable."""


@dataclass
class FleetContext:
    settings: ExecutorSettings
    mailbox: Mailbox
    started: float = field(default_factory=time.time)
    cache: SnapshotCache = field(default_factory=SnapshotCache)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def scheduler_keys(self) -> KeyRing:
        return KeyRing([self.settings.signing_key.public])

    @property
    def stale_after(self) -> float:
        return max(STALE_INTERVALS * self.settings.fleet_snapshot_interval, STALE_MIN)

    def fleet(self) -> Fleet:
        with self.lock:  # the cache is shared by the server's threads
            fleet = read_fleet(
                self.mailbox,
                self.scheduler_keys,
                self.settings.worker_timeout,
                self.stale_after,
                own_since=self.started,
                cache=self.cache,
            )
        if not fleet.snapshots:
            fleet.problems.append(
                "no scheduler has written a fleet snapshot: workers show as unknown until one "
                "does (every fleet_snapshot_interval; 0 turns it off)"
            )
        return fleet

    def control(self) -> FleetControl:
        """A FleetControl with the worker keys read again: enrolling a worker (adding its
        .pub file) needs no api-server restart, as it needs no scheduler restart."""
        from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_worker_keys

        try:
            keys = load_worker_keys(self.settings.worker_keys_spec)
        except EdgeMailboxConfigError as exc:
            raise ConfigProblem(str(exc)) from None
        return FleetControl(
            self.mailbox, self.settings.signing_key, keys, self.settings.worker_timeout
        )


def load_context() -> FleetContext:
    """Read [edge_mailbox] as the scheduler does, and build the store."""
    from airflow.configuration import conf
    from airflow.executors.base_executor import get_execution_api_server_url

    from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_settings
    from edge_mailbox.mailbox.credentials import MissingCredentials, credentials_required
    from edge_mailbox.mailbox.store import ObjectStore

    try:
        settings = load_settings(conf, get_execution_api_server_url())
    except EdgeMailboxConfigError as exc:
        raise ConfigProblem(f"configuration: {exc}") from None
    try:
        with credentials_required(settings.store.bucket):
            return FleetContext(settings, Mailbox(ObjectStore(settings.store)))
    except MissingCredentials as exc:
        raise ConfigProblem(f"credentials: {exc}") from None


class ContextHolder:
    """One FleetContext per process, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: FleetContext | None = None

    def get(self) -> FleetContext:
        with self._lock:
            if self._context is None:
                self._context = load_context()
            return self._context

    def reset(self) -> None:
        """Forget the context: the next request reads the configuration again."""
        with self._lock:
            self._context = None
