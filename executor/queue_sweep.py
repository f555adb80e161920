"""Removal of what no worker may run from the queues: the scheduler side owns their prefixes.

Workers refuse a manifest that fails verification (unsigned, tampered, foreign, expired) and
skip keys that are no manifest at all, but they cannot delete them: their storage policy
does not allow it, and a worker must not decide what leaves a queue. Left there, such
objects are read and refused again by every worker after each restart, and a flood of them
would fill the first LIST page that workers read. So the reconciler looks at the front of
each queue it knows now and then (one LIST per queue; a GET only for a manifest it did not
write itself and has not verified yet) and deletes what it would refuse too.
"""

from __future__ import annotations

import logging
import time

from edge_mailbox.executor import metrics
from edge_mailbox.mailbox.errors import NotFound, ProtocolError
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, VerificationError

log = logging.getLogger(__name__)


class QueueSweeper:
    """Remembers which manifests of the queues' first pages it verified, until they expire."""

    def __init__(self, mailbox: Mailbox, scheduler_keys: KeyRing) -> None:
        self.mailbox = mailbox
        self.scheduler_keys = scheduler_keys
        self.verified: dict[str, float] = {}  # manifest key -> its expiry

    def sweep(self, queue: str, own: set[str]) -> list[str]:
        """Delete the refusable objects on the first page of ``queue``; ``own`` are the
        manifest keys this scheduler wrote (never fetched). Returns the keys deleted."""
        page = self.mailbox.list_queue(queue)
        listed = {entry.key for entry in page.entries}
        now = time.time()
        doomed = []
        for key in sorted(listed - own):
            if self.verified.get(key, 0) > now:
                continue
            reason = self._refusal(key, queue)
            if reason:
                log.warning("edge-mailbox: removing %s from queue %s: %s", key, queue, reason)
                metrics.incr("refused")
                doomed.append(key)
        for key in [
            k for k in self.verified if k.startswith(self.mailbox.layout.queue_jobs(queue))
        ]:
            if key not in listed:
                del self.verified[key]  # claimed or removed: nothing to remember
        if doomed:
            failed = set(self.mailbox.store.delete_many(doomed))
            doomed = [k for k in doomed if k not in failed]
        return doomed

    def _refusal(self, key: str, queue: str) -> str:
        try:
            _, signed = self.mailbox.read_manifest(key, queue, self.scheduler_keys)
        except NotFound:
            return ""  # claimed meanwhile
        except ValueError as exc:  # no manifest key at all
            return str(exc)
        except (VerificationError, ProtocolError) as exc:
            return str(exc)
        self.verified[key] = signed.expires_at
        return ""
