"""The worker keys the scheduler side trusts: read again from their files every
``worker_check_interval`` (and at once, at most once a second, when an unknown key signs a
claim), so that enrolling or revoking a worker is adding or removing its .pub file."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_mailbox.executor.settings import (
    EdgeMailboxConfigError,
    ExecutorSettings,
    load_worker_keys,
)
from edge_mailbox.signer import KeyRing

log = logging.getLogger(__name__)
MIN_RELOAD_INTERVAL = 1.0


class TrustedWorkers:
    def __init__(self, settings: ExecutorSettings, on_added: Callable[[], None]) -> None:
        self.settings = settings
        self.on_added = on_added  # items that waited for a key get another look
        self.loaded_at = time.monotonic()

    @property
    def keys(self) -> KeyRing:
        return self.settings.worker_keys

    def reload(self) -> None:
        """Pick up enrolled and removed worker keys without a restart."""
        self.loaded_at = time.monotonic()
        try:
            fresh = load_worker_keys(self.settings.worker_keys_spec)
        except EdgeMailboxConfigError as exc:
            log.error("edge-mailbox: keeping the trusted worker keys as they were: %s", exc)
            return
        added, removed = self.settings.worker_keys.replace_with(fresh)
        if added:
            self.on_added()
        if added or removed:
            log.info(
                "edge-mailbox: worker keys now trusted: +%s -%s",
                ",".join(sorted(added)) or "none",
                ",".join(sorted(removed)) or "none",
            )

    def reload_for_unknown_key(self) -> bool:
        """An unknown key signed something: perhaps a worker enrolled a moment ago. Reload,
        unless that was done within the last second; True if it was reloaded."""
        if time.monotonic() - self.loaded_at < MIN_RELOAD_INTERVAL:
            return False
        self.reload()
        return True
