"""The protocol over one bucket: each kind of object, where it lives, how it is bound.

Both the executor and the worker speak through this class, so key names, bindings, seal
contexts and lifetimes exist once. Signed objects are verified against the caller's key
ring before their body is looked at; every refusal raises VerificationError (with its
reason) or ProtocolError.
"""

from __future__ import annotations

import json
import time
import uuid

from edge_mailbox.mailbox.codec import Signed, binding, decode_signed, encode_signed
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, PreconditionFailed
from edge_mailbox.mailbox.layout import Layout, ManifestKey
from edge_mailbox.mailbox.models import (
    ChangeMarker,
    Claim,
    Heartbeat,
    JobManifest,
    JobResult,
    RelayRequest,
    RelayResponse,
    Revocation,
    WireModel,
)
from edge_mailbox.mailbox.store import Entry, ObjectStore, Page
from edge_mailbox.signer import KeyRing, SigningKey

JOSE = "application/jose"
# How long records signed by a worker stay verifiable: a task may run for days, and the
# scheduler side re-reads claims after a restart. Replay is moot for them: each is bound to
# one job id and created at most once.
RECORD_TTL = 30 * 86400.0
RELAY_TTL = 6 * 3600.0


def nonce() -> str:
    return uuid.uuid4().hex


class Mailbox:
    """Typed reads and writes of protocol objects in one bucket under one prefix."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.layout = Layout(store.config.prefix)
        self.bucket = store.config.bucket

    def bind(self, **ids: str) -> dict[str, str]:
        return binding(self.bucket, self.layout.prefix, **ids)

    def seal_context(self, job_id: str, request_id: str, direction: str) -> str:
        return f"{self.bucket}/{self.layout.prefix}/{job_id}/{request_id}/{direction}"

    def log_context(self, job_id: str, seq: int) -> str:
        return f"{self.bucket}/{self.layout.prefix}/{job_id}/log/{seq}"

    def _read(self, key: str, cls: type[WireModel], keyring: KeyRing, bind: dict[str, str]):
        raw = self.store.get(key, max_bytes=cls.MAX_BYTES * 2).body
        return decode_signed(raw, cls, keyring, bind=bind, key=key)

    # -- queues ------------------------------------------------------------------------------

    def put_manifest(self, manifest: JobManifest, key: SigningKey, ttl: float) -> str:
        object_key = self.layout.manifest(
            manifest.queue, manifest.job_id, manifest.priority, manifest.enqueued_at
        )
        bind = self.bind(queue=manifest.queue, job_id=manifest.job_id)
        body = encode_signed(manifest, key, bind=bind, ttl=ttl)
        self.store.create(object_key, body, content_type=JOSE)
        return object_key

    def read_manifest(
        self, object_key: str, queue: str, keyring: KeyRing
    ) -> tuple[bytes, Signed[JobManifest]]:
        """Verify a manifest against the queue and job id its key says it belongs to."""
        parsed: ManifestKey = self.layout.parse_manifest(object_key)
        raw = self.store.get(object_key, max_bytes=JobManifest.MAX_BYTES * 2).body
        return raw, self.verify_manifest(raw, queue, parsed.job_id, keyring, object_key)

    def verify_manifest(
        self, raw: bytes, queue: str, job_id: str, keyring: KeyRing, object_key: str | None = None
    ) -> Signed[JobManifest]:
        signed = decode_signed(
            raw, JobManifest, keyring, bind=self.bind(queue=queue, job_id=job_id), key=object_key
        )
        return signed

    def list_queue(self, queue: str, *, start_after: str | None = None) -> Page:
        return self.store.list_page(self.layout.queue_jobs(queue), start_after=start_after)

    def bump_marker(self, queue: str) -> None:
        """Ring a queue's marker, then the all-queues marker that idle workers watch."""
        self._ring(self.layout.queue_marker(queue), queue)
        self._ring(self.layout.queues_marker, "queues")

    def any_queue_changed(self, etag: str | None) -> tuple[bool, str | None]:
        return self._changed(self.layout.queues_marker, etag)

    def marker_changed(self, queue: str, etag: str | None) -> tuple[bool, str | None]:
        """(changed, new etag) of a queue's marker: a cheap 304 when nothing changed."""
        return self._changed(self.layout.queue_marker(queue), etag)

    def _ring(self, key: str, scope: str) -> None:
        marker = ChangeMarker(scope=scope, updated_at=time.time(), nonce=nonce())
        self.store.put(key, marker.to_json())

    def _changed(self, key: str, etag: str | None) -> tuple[bool, str | None]:
        try:
            obj = self.store.get_if_changed(key, etag, max_bytes=ChangeMarker.MAX_BYTES)
        except NotFound:
            return etag is not None, None
        if obj is None:
            return False, etag
        return True, obj.etag

    # -- claims ------------------------------------------------------------------------------

    def create_claim(self, claim: Claim, key: SigningKey) -> None:
        """Claim a job; AlreadyExists when another worker was first."""
        body = encode_signed(claim, key, bind=self.bind(job_id=claim.job_id), ttl=RECORD_TTL)
        self.store.create(self.layout.claim(claim.job_id), body, content_type=JOSE)

    def read_claim(self, job_id: str, worker_keys: KeyRing) -> Signed[Claim]:
        return self._read(self.layout.claim(job_id), Claim, worker_keys, self.bind(job_id=job_id))

    # -- inbox notices: empty objects whose keys say what to look at -------------------------

    def notify(self, inbox_key: str, *, ring: bool = True) -> None:
        """Post an empty notice whose key says what to look at, and ring the inbox (unless
        another ring is sure to follow soon: the scheduler side lists the whole inbox on any
        ring, so one ring serves every notice posted before it)."""
        self.store.put(inbox_key, b"", content_type="application/octet-stream")
        if ring:
            self.ring_inbox()

    def ring_inbox(self) -> None:
        self._ring(self.layout.inbox_marker, "inbox")

    def inbox_changed(self, etag: str | None) -> tuple[bool, str | None]:
        return self._changed(self.layout.inbox_marker, etag)

    def list_inbox(self, *, start_after: str | None = None) -> Page:
        return self.store.list_page(self.layout.inbox, start_after=start_after)

    # -- relay -------------------------------------------------------------------------------

    def put_request(self, request: RelayRequest, key: SigningKey) -> None:
        """Post a relay request to the inbox; the caller then rings the inbox."""
        bind = self.bind(job_id=request.job_id, request_id=request.request_id, kind="request")
        body = encode_signed(request, key, bind=bind, ttl=RELAY_TTL)
        self.store.create(
            self.layout.inbox_request(request.job_id, request.request_id), body, content_type=JOSE
        )

    def read_request(
        self, job_id: str, request_id: str, worker_keys: KeyRing
    ) -> Signed[RelayRequest]:
        bind = self.bind(job_id=job_id, request_id=request_id, kind="request")
        return self._read(
            self.layout.inbox_request(job_id, request_id), RelayRequest, worker_keys, bind
        )

    def take_request(self, job_id: str, request_id: str, owner: str, lease: float) -> bool:
        """Take the right to replay a request: a conditional create of its lease object.

        False when another reconciler holds it. A lease older than ``lease`` seconds (its
        holder died between taking and answering) is taken over with a compare-and-swap."""
        key = self.layout.relay_lease(job_id, request_id)
        body = json.dumps({"owner": owner, "taken_at": time.time(), "nonce": nonce()}).encode()
        try:
            self.store.create(key, body)
            return True
        except AlreadyExists:
            pass
        try:
            current = self.store.get(key, max_bytes=4096)
            held = json.loads(current.body)
            taken_at = float(held.get("taken_at", 0))
        except (NotFound, ValueError, TypeError, AttributeError):
            return False
        if held.get("owner") == owner:
            return True  # ours, from an attempt that did not get to answer
        if time.time() - taken_at < lease:
            return False
        try:
            self.store.replace(key, body, current.etag)
        except PreconditionFailed:
            return False
        return True

    def put_response(self, response: RelayResponse, key: SigningKey) -> None:
        """Write the answer once: a second reconciler's answer to the same request loses."""
        bind = self.bind(job_id=response.job_id, request_id=response.request_id, kind="response")
        body = encode_signed(response, key, bind=bind, ttl=RELAY_TTL)
        self.store.create(
            self.layout.relay_response(response.job_id, response.request_id),
            body,
            content_type=JOSE,
        )

    def read_response(
        self, job_id: str, request_id: str, scheduler_keys: KeyRing
    ) -> Signed[RelayResponse]:
        bind = self.bind(job_id=job_id, request_id=request_id, kind="response")
        return self._read(
            self.layout.relay_response(job_id, request_id), RelayResponse, scheduler_keys, bind
        )

    # -- heartbeats ---------------------------------------------------------------------------

    def put_heartbeat(self, heartbeat: Heartbeat, key: SigningKey, ttl: float) -> None:
        bind = self.bind(worker=heartbeat.worker)
        body = encode_signed(heartbeat, key, bind=bind, ttl=ttl)
        self.store.put(self.layout.heartbeat(heartbeat.worker), body, content_type=JOSE)

    def read_heartbeat(self, worker: str, worker_keys: KeyRing) -> Signed[Heartbeat]:
        key = self.layout.heartbeat(worker)
        return self._read(key, Heartbeat, worker_keys, self.bind(worker=worker))

    def list_heartbeats(self) -> list[Entry]:
        """All workers' liveness from LIST alone (LastModified): a page per 1,000 workers."""
        return list(self.store.list_all(self.layout.heartbeats))

    # -- results and revocations -------------------------------------------------------------

    def put_result(self, result: JobResult, key: SigningKey) -> None:
        body = encode_signed(result, key, bind=self.bind(job_id=result.job_id), ttl=RECORD_TTL)
        self.store.put(self.layout.result(result.job_id), body, content_type=JOSE)

    def read_result(self, job_id: str, worker_keys: KeyRing) -> Signed[JobResult]:
        return self._read(
            self.layout.result(job_id), JobResult, worker_keys, self.bind(job_id=job_id)
        )

    def revoked(self, job_id: str, scheduler_keys: KeyRing) -> Revocation | None:
        """The job's revocation, if the scheduler side signed one (one GET, a 404 mostly)."""
        try:
            signed = self._read(
                self.layout.revocation(job_id), Revocation, scheduler_keys, self.bind(job_id=job_id)
            )
        except NotFound:
            return None
        return signed.model

    def put_revocation(self, revocation: Revocation, key: SigningKey) -> None:
        bind = self.bind(job_id=revocation.job_id)
        body = encode_signed(revocation, key, bind=bind, ttl=RECORD_TTL)
        self.store.put(self.layout.revocation(revocation.job_id), body, content_type=JOSE)
