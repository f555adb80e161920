"""Finding and claiming jobs: the worker's side of the queues.

An idle worker polls one all-queues change marker with a conditional GET, its queues' own
markers only when that changed, and LISTs a queue only when its marker changed (or once at
start, or when slots freed while a job waited). It verifies a manifest's signature and
binding before anything else, and claims it with a conditional create: a lost race costs one
request. One manifest that cannot be read (malformed, hostile, gone) is skipped, never the
end of the worker.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from edge_mailbox import __version__
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.models import Claim, JobManifest
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.mailbox.recent import RecentSet
from edge_mailbox.signer import SealKey, VerificationError
from edge_mailbox.worker.settings import WorkerSettings

log = logging.getLogger("edge_mailbox.worker")
# Job ids looked at already (claimed, lost to another worker, or refused): skipped in later
# LISTs. Bounded: the scheduler side removes refused manifests from the queue.
SEEN_JOBS = 10_000


def major(version: str) -> str:
    return version.split(".", 1)[0]


class Host(Protocol):
    """What the finder needs of its worker."""

    @property
    def free_slots(self) -> int: ...

    @property
    def accepting(self) -> bool: ...

    @property
    def queues(self) -> tuple[str, ...]: ...

    @property
    def concurrency(self) -> int: ...

    def refuse(self, reason: str) -> None: ...

    def start(self, queue: str, raw: bytes, manifest: JobManifest, seal_key: SealKey) -> None: ...


class Finder:
    def __init__(
        self, mailbox: Mailbox, settings: WorkerSettings, bundles: set[str] | None, host: Host
    ) -> None:
        self.mailbox = mailbox
        self.settings = settings
        self.bundles = bundles  # DAG bundles configured here; None: do not check
        self.host = host
        self.seen: RecentSet[str] = RecentSet(SEEN_JOBS)
        self.queues_etag: str | None = None
        self.rang = False  # the all-queues marker rang since the queues' markers were read
        self.marker_etags: dict[str, str | None] = {}
        self.rescan: set[str] = set(host.queues)  # list every queue once at start

    def doorbell(self) -> bool:
        """One conditional GET of the all-queues marker; True if it rang. The ring is kept
        for ``poll`` while the worker takes no jobs (full, in maintenance)."""
        changed, self.queues_etag = self.mailbox.any_queue_changed(self.queues_etag)
        self.rang |= changed
        return changed

    def follow(self) -> None:
        """The worker's queues or slots changed: list each of its queues again, and look
        again at the jobs passed over (one may fit the new slots)."""
        self.marker_etags = {q: e for q, e in self.marker_etags.items() if q in self.host.queues}
        self.rescan = set(self.host.queues)
        self.seen.clear()

    def poll(self) -> bool:
        """Look at the queues whose markers changed since the doorbell rang; claim what
        fits. True if a job was claimed."""
        if not self.rang and not self.rescan:
            return False
        self.rang = False
        claimed = False
        for queue in self.host.queues:
            changed, etag = self.mailbox.marker_changed(queue, self.marker_etags.get(queue))
            self.marker_etags[queue] = etag
            if changed or queue in self.rescan:
                self.rescan.discard(queue)
                claimed |= self.scan(queue)
            if self.host.free_slots <= 0 or not self.host.accepting:
                break
        return claimed

    def candidates(self, queue: str) -> tuple[list[tuple[str, str]], bool]:
        """(key, job id) of unseen manifests in claim order, and whether the page was cut.

        LIST order is priority, then age. Among the jobs of the top priority, each worker
        starts at its own offset (a hash of its name), so that many workers on one queue do
        not all race for the same job: a lost race still costs only one request."""
        page = self.mailbox.list_queue(queue)
        rows: list[tuple[str, str, int]] = []
        for entry in page.entries:
            try:
                parsed = self.mailbox.layout.parse_manifest(entry.key)
            except ValueError:
                continue
            if parsed.job_id not in self.seen:
                rows.append((entry.key, parsed.job_id, parsed.priority))
        if not rows:
            return [], page.truncated
        top = [r for r in rows if r[2] == rows[0][2]]
        offset = sum(self.settings.name.encode()) % len(top)
        ordered = top[offset:] + top[:offset] + rows[len(top) :]
        return [(key, job_id) for key, job_id, _ in ordered], page.truncated

    def scan(self, queue: str) -> bool:
        """One LIST page of the queue; verify and claim what fits."""
        candidates, truncated = self.candidates(queue)
        claimed = False
        for index, (key, job_id) in enumerate(candidates):
            try:
                outcome = self._consider(queue, key, job_id)
            except StoreError:
                raise
            except Exception as exc:  # one poisoned manifest never stops the worker
                log.error("refusing manifest %s: %s: %s", key, type(exc).__name__, exc)
                outcome = "seen"
            if outcome == "wait":
                self.rescan.add(queue)  # look again when slots free up
                break
            claimed |= outcome == "claimed"
            self.seen.add(job_id)
            if self.host.free_slots <= 0 or not self.host.accepting:
                if index < len(candidates) - 1:
                    self.rescan.add(queue)
                break
        else:
            if truncated:
                self.rescan.add(queue)
        return claimed

    def _consider(self, queue: str, key: str, job_id: str) -> str:
        """What became of one listed manifest: "claimed", "seen" (refused, taken by another
        worker, gone) or "wait" (it needs more slots than are free now)."""
        try:
            raw, signed = self.mailbox.read_manifest(key, queue, self.settings.scheduler_keys)
        except NotFound:  # another worker claimed it and the scheduler side removed it
            log.debug("manifest %s is gone: another worker took it", key)
            return "seen"
        except (VerificationError, ProtocolError) as exc:
            log.warning("refusing manifest %s: %s", key, exc)
            return "seen"
        manifest = signed.model
        if not self._acceptable(job_id, manifest):
            return "seen"
        if manifest.pool_slots > self.host.free_slots:
            return "wait"
        return "claimed" if self._claim(queue, raw, manifest) else "seen"

    def _acceptable(self, job_id: str, manifest: JobManifest) -> bool:
        if major(manifest.scheduler_version) != major(__version__):
            refusal = (
                f"version mismatch: the scheduler side runs edge-mailbox "
                f"{manifest.scheduler_version}, this worker {__version__}; finishing running "
                "jobs, taking no new ones"
            )
            log.error("%s (job %s)", refusal, job_id)
            self.host.refuse(refusal)
            return False
        bundle = str(manifest.bundle_info.get("name"))
        needs_bundle = manifest.connection_test is None  # a connection test runs no DAG code
        if needs_bundle and self.bundles is not None and bundle not in self.bundles:
            log.warning(
                "not claiming job %s: it needs DAG bundle %r, and this worker has only %s "
                "([dag_processor] dag_bundle_config_list must match the scheduler's)",
                job_id,
                bundle,
                ", ".join(sorted(self.bundles)) or "none",
            )
            return False
        if manifest.pool_slots > self.host.concurrency:
            log.warning(
                "not claiming job %s: it needs %d slots; this worker has %d",
                job_id,
                manifest.pool_slots,
                self.host.concurrency,
            )
            return False
        return True

    def _claim(self, queue: str, raw: bytes, manifest: JobManifest) -> bool:
        seal_key = SealKey.generate()
        claim = Claim(
            job_id=manifest.job_id,
            queue=queue,
            worker=self.settings.name,
            seal_key=seal_key.public,
            claimed_at=time.time(),
            nonce=nonce(),
            worker_version=__version__,
            manifest=raw.decode("ascii"),
        )
        try:
            self.mailbox.create_claim(claim, self.settings.key)
        except AlreadyExists:
            return False
        log.info("claimed job %s (%s)", manifest.job_id, manifest.describe())
        try:
            revocation = self.mailbox.revoked(manifest.job_id, self.settings.scheduler_keys)
        except (StoreError, VerificationError, ProtocolError) as exc:
            revocation = None  # the relay refuses a revoked job's first call anyway
            log.warning("could not check job %s for a revocation: %s", manifest.job_id, exc)
        if revocation is not None:
            log.warning("not starting job %s: %s", manifest.job_id, revocation.reason)
            return True
        self.host.start(queue, raw, manifest, seal_key)
        try:  # no ring: the job's first relay call rings the inbox in a moment, or its result
            self.mailbox.notify(self.mailbox.layout.inbox_claim(manifest.job_id), ring=False)
        except StoreError as exc:  # the scheduler side also finds claims through relay calls
            log.warning("claim notice for %s failed (%s)", manifest.job_id, exc)
        return True
