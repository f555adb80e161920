"""The inbox as the scheduler side reads it: its change marker, its pages, and the verdict on
each item (acted on and deleted, refused and deleted, parked, or left for another scheduler).

Handled items are deleted in batches, once per turn of the reconciler's loop and before each
LIST (one DeleteObjects instead of a DELETE each); one listed again in between is known as
handled (answered, reported) and costs nothing. A flooded inbox is read a few pages a poll,
each poll going on where the last one stopped: a poll costs the same however many items wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_mailbox.executor import metrics
from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.recent import RecentSet
from edge_mailbox.signer import Reason, VerificationError

log = logging.getLogger(__name__)

# Pages of the inbox one poll reads at most (1,000 items each).
PAGES_PER_POLL = 3
# How long an item signed by an unknown key waits for its key to be enrolled (key files are
# read again every worker_check_interval) before it is deleted, unless inbox_item_timeout is
# shorter.
UNTRUSTED_GRACE = 300.0
# Refused and parked inbox keys remembered (so each is logged once), the oldest forgotten.
REMEMBERED_ITEMS = 10_000


@dataclass(frozen=True)
class Item:
    """One inbox object, as its key and its age say."""

    key: str
    job_id: str
    kind: str  # "claim", "result" or "request"
    request_id: str | None
    expired: bool  # older than inbox_item_timeout
    untrusted: bool  # older than UNTRUSTED_GRACE: its key had time to be enrolled


class Inbox:
    def __init__(self, mailbox: Mailbox, item_timeout: float) -> None:
        self.mailbox = mailbox
        self.item_timeout = item_timeout
        self.etag: str | None = None
        self.resume_after: str | None = None  # where the next LIST goes on, in a flood
        # Signed by a key not trusted (yet): kept, not acted on, for UNTRUSTED_GRACE.
        self.parked: RecentSet[str] = RecentSet(REMEMBERED_ITEMS)
        self.rejected: RecentSet[str] = RecentSet(REMEMBERED_ITEMS)
        self._lock = threading.Lock()  # relay threads and the loop share what follows
        self._deletions: list[str] = []
        self._left: set[str] = set()  # notices left for the scheduler that owns their job

    def changed(self) -> bool:
        """One conditional GET of the inbox marker: a 304 when nothing changed."""
        changed, self.etag = self.mailbox.inbox_changed(self.etag)
        return changed

    @property
    def waiting(self) -> bool:
        """Items that want another look later even if the marker does not ring."""
        with self._lock:
            return bool(self.parked) or bool(self._left)

    @property
    def more_pages(self) -> bool:
        return self.resume_after is not None

    def read(self) -> list[Item]:
        """The next pages of the inbox, parsed. A key that is no inbox key is refused."""
        self.flush()  # what was handled must not be listed again
        with self._lock:
            self._left = set()
        items = []
        now = time.time()
        after = self.resume_after
        for _ in range(PAGES_PER_POLL):
            page = self.mailbox.list_inbox(start_after=after)
            for entry in page.entries:
                try:
                    job_id, kind, request_id = self.mailbox.layout.parse_inbox(entry.key)
                except ValueError:
                    self.reject(entry.key, "unknown key in the inbox")
                    continue
                age = now - entry.last_modified.timestamp()
                items.append(
                    Item(
                        entry.key,
                        job_id,
                        kind,
                        request_id,
                        expired=age > self.item_timeout,
                        untrusted=age > min(UNTRUSTED_GRACE, self.item_timeout),
                    )
                )
            after = page.last_key if page.truncated else None
            if after is None:
                break
        self.resume_after = after
        return items

    def handle(
        self, key: str | None, what: str, handler: Callable[..., object], *args: object
    ) -> bool:
        """Handle one item so that nothing it holds can stop the others: any error but the
        bucket's own (the item is fine, the bucket is not: try again later) refuses and
        removes that one item, with the reason in the log. False only when the handler says
        the item must wait (another reconciler holds it)."""
        try:
            return handler(*args) is not False
        except StoreError:
            raise
        except Exception as exc:
            log.error("edge-mailbox: %s %s could not be handled", what, key or "", exc_info=True)
            self.reject(key, f"{what} could not be handled: {type(exc).__name__}: {exc}")
            return True

    # -- verdicts ----------------------------------------------------------------------------

    def done(self, key: str | None) -> None:
        """Acted on: deleted with the next batch."""
        if key:
            with self._lock:
                self._deletions.append(key)

    def reject(self, key: str | None, reason: str) -> None:
        """Refused: logged once with the reason, and deleted."""
        if key is None:
            log.warning("edge-mailbox: %s", reason)
            return
        with self._lock:
            first = key not in self.rejected
            self.rejected.add(key)
        if first:
            log.warning("edge-mailbox: ignoring %s: %s", key, reason)
            metrics.incr("refused")
        self.done(key)

    def refuse(self, key: str | None, what: str, exc: Exception) -> None:
        """A refused item is deleted, unless only its key is unknown: a worker enrolled a
        moment ago must not lose its claim or its call, so that item waits (parked) until the
        trusted keys change, or UNTRUSTED_GRACE passes."""
        if key and isinstance(exc, VerificationError) and exc.reason is Reason.UNKNOWN_KEY:
            with self._lock:
                first = key not in self.parked
                self.parked.add(key)
            if first:
                log.warning("edge-mailbox: %s waits for its key to be trusted: %s", key, exc)
            return
        self.reject(key, f"{what}: {exc}")

    def leave(self, item_key: str | None, expired: bool, reason: str) -> None:
        """Another scheduler's notice: it stays for its owner, until it waited too long."""
        if not item_key:
            return
        if expired:
            self.reject(item_key, f"{reason}, left unread too long")
            return
        with self._lock:
            self._left.add(item_key)

    def still_parked(self, item: Item) -> bool:
        """Parked items are skipped; one parked too long is deleted: a bucket writer must not
        fill the inbox this way."""
        if item.key not in self.parked:
            return False
        if item.untrusted:
            with self._lock:
                self.parked.discard(item.key)
            self.reject(item.key, "its signing key was never trusted")
        return True

    def unpark_all(self) -> None:
        """The trusted keys changed: what waited for a key gets another look."""
        with self._lock:
            self.parked.clear()

    def flush(self) -> None:
        with self._lock:
            keys, self._deletions = self._deletions, []
        if not keys:
            return
        try:
            if len(keys) == 1:
                self.mailbox.store.delete(keys[0])
                failed: list[str] = []
            else:
                failed = self.mailbox.store.delete_many(keys)
        except StoreError as exc:
            log.warning("edge-mailbox: %d deletions wait: %s", len(keys), exc)
            with self._lock:
                self._deletions.extend(keys)
            return
        if failed:  # listed again and handled again: deleted on a later turn
            log.warning("edge-mailbox: the bucket refused to delete %s", failed[:10])
