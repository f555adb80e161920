"""The protocol over one bucket: each kind of object, where it lives, how it is bound.

Both the executor and the worker speak through this class, so key names, bindings, seal
contexts and lifetimes exist once. Signed objects are verified against the caller's key
ring before their body is looked at; every refusal raises VerificationError (with its
reason) or ProtocolError.
"""

from __future__ import annotations

import contextlib
import enum
import json
import time
import uuid

from edge_mailbox.mailbox.codec import Signed, binding, decode_signed, encode_signed
from edge_mailbox.mailbox.errors import AlreadyExists, NotFound, PreconditionFailed, ProtocolError
from edge_mailbox.mailbox.layout import Layout, ManifestKey, TaskCoordinates
from edge_mailbox.mailbox.models import (
    ChangeMarker,
    Claim,
    FleetSnapshot,
    Heartbeat,
    JobManifest,
    JobResult,
    LogChunk,
    RelayRequest,
    RelayResponse,
    Revocation,
    WireModel,
    WorkerCommand,
)
from edge_mailbox.mailbox.storage import Entry, Page, Store
from edge_mailbox.signer import KeyRing, Reason, SigningKey, VerificationError, seal, strictjson

JOSE = "application/jose"
# How long records signed by a worker stay verifiable: a task may run for days, and the
# scheduler side re-reads claims after a restart. Replay is moot for them: each is bound to
# one job id and created at most once.
RECORD_TTL = 30 * 86400.0
RELAY_TTL = 6 * 3600.0
# Log chunks stay readable as long as the bucket keeps them (its lifecycle rule decides);
# replay is moot for them too: each is bound to its place and created once.
LOG_TTL = 3650 * 86400.0
# A command is a worker's desired state for as long as nobody changes it: it must not expire.
# An old one written back is refused by its seq, which the worker keeps across restarts.
COMMAND_TTL = LOG_TTL
FLEET_TTL = 86400.0


class Lease(enum.Enum):
    """How a reconciler came to hold a relay request's lease."""

    NEW = "new"
    RESUMED = "resumed"
    HELD = "held by another reconciler"

    def __bool__(self) -> bool:
        return self is not Lease.HELD


def nonce() -> str:
    return uuid.uuid4().hex


class Mailbox:
    """Typed reads and writes of protocol objects in one bucket under one prefix."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.layout = Layout(store.config.prefix)
        self.bucket = store.config.bucket

    def bind(self, **ids: str) -> dict[str, str]:
        return binding(self.bucket, self.layout.prefix, **ids)

    def callback_context(self, job_id: str) -> str:
        return f"{self.bucket}/{self.layout.prefix}/{job_id}/callback"

    def seal_context(self, job_id: str, request_id: str, direction: str) -> str:
        return f"{self.bucket}/{self.layout.prefix}/{job_id}/{request_id}/{direction}"

    def log_context(self, ti: TaskCoordinates, job_id: str, seq: int) -> str:
        """A log chunk's seal context: its whole key (prefix, task-instance try, job, seq)."""
        return f"{self.bucket}/{self.layout.log_chunk(ti, job_id, seq)}"

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
        self,
        raw: bytes,
        queue: str,
        job_id: str,
        keyring: KeyRing,
        object_key: str | None = None,
        *,
        at: float | None = None,
    ) -> Signed[JobManifest]:
        """Verify a manifest as of ``at`` (now by default): a claim's embedded manifest is
        checked as of its claim, so a job queued long ago keeps its relay."""
        return decode_signed(
            raw,
            JobManifest,
            keyring,
            bind=self.bind(queue=queue, job_id=job_id),
            key=object_key,
            now=at,
        )

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

    def take_request(self, job_id: str, request_id: str, owner: str, lease: float) -> Lease:
        """Take the right to replay a request: a conditional create of its lease object.

        HELD (false) when another reconciler holds it. A lease older than ``lease`` seconds
        (its holder died between taking and answering) is taken over with a compare-and-swap.
        Only a NEW lease proves nobody replayed the request before; a RESUMED one (ours from
        before, or taken over) means the caller must look for its answer first."""
        key = self.layout.relay_lease(job_id, request_id)
        body = json.dumps({"owner": owner, "taken_at": time.time(), "nonce": nonce()}).encode()
        try:
            self.store.create(key, body)
            return Lease.NEW
        except AlreadyExists:
            pass
        try:
            current = self.store.get(key, max_bytes=4096)
            held = strictjson.loads(current.body)
            taken_at = float(held.get("taken_at", 0))
        except (NotFound, ValueError, TypeError, AttributeError):
            return Lease.HELD
        if held.get("owner") == owner:
            return Lease.RESUMED  # ours, from an attempt that did not get to answer
        if time.time() - taken_at < lease:
            return Lease.HELD
        try:
            self.store.replace(key, body, current.etag)
        except PreconditionFailed:
            return Lease.HELD
        return Lease.RESUMED

    def answered(self, job_id: str, request_id: str) -> bool:
        """Whether a response to the request exists (one HEAD)."""
        try:
            self.store.head(self.layout.relay_response(job_id, request_id))
        except NotFound:
            return False
        return True

    def answered_requests(self, job_id: str) -> set[str]:
        """The ids of a job's answered requests (one LIST page per 1,000): what a scheduler
        that did not watch the job from its start knows it must never replay."""
        answered = set()
        for entry in self.store.list_all(self.layout.relay_responses(job_id)):
            with contextlib.suppress(ValueError):
                answered.add(self.layout.parse_relay_response(entry.key))
        return answered

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

    def verify_heartbeat(self, raw: bytes, worker: str, worker_keys: KeyRing) -> Signed[Heartbeat]:
        """A heartbeat found at ``workers/{worker}.jws``: signed by a trusted worker key, bound
        to that name, and naming that worker in its body too."""
        key = self.layout.heartbeat(worker)
        signed = decode_signed(raw, Heartbeat, worker_keys, bind=self.bind(worker=worker), key=key)
        if signed.model.worker != worker:
            raise ProtocolError(f"heartbeat names worker {signed.model.worker!r}", key=key)
        return signed

    def list_heartbeats(self) -> list[Entry]:
        """All workers' liveness from LIST alone (LastModified): a page per 1,000 workers."""
        return list(self.store.list_all(self.layout.heartbeats))

    def delete_heartbeat(self, worker: str) -> None:
        self.store.delete(self.layout.heartbeat(worker))

    # -- commands and the fleet ---------------------------------------------------------------

    def put_command(self, command: WorkerCommand, key: SigningKey) -> None:
        """Write a worker's desired state and ring the all-queues marker: every worker polls
        that one already (idle, busy or in maintenance), so it learns of the command at its
        next poll with no request of its own for it."""
        bind = self.bind(worker=command.worker)
        body = encode_signed(command, key, bind=bind, ttl=COMMAND_TTL)
        self.store.put(self.layout.command(command.worker), body, content_type=JOSE)
        self._ring(self.layout.queues_marker, "queues")

    def read_command(self, worker: str, scheduler_keys: KeyRing) -> Signed[WorkerCommand]:
        """The worker's command (NotFound if none), verified like the worker verifies it."""
        raw = self.store.get(self.layout.command(worker), max_bytes=WorkerCommand.MAX_BYTES * 2)
        return self.verify_command(raw.body, worker, scheduler_keys)

    def command_if_changed(self, worker: str, etag: str | None) -> tuple[bytes | None, str | None]:
        """(body, ETag) of the worker's command if it changed since ``etag`` (a conditional
        GET: a 304 when not, then ``(None, etag)``); ``(None, None)`` when there is none."""
        key = self.layout.command(worker)
        try:
            obj = self.store.get_if_changed(key, etag, max_bytes=WorkerCommand.MAX_BYTES * 2)
        except NotFound:
            return None, None
        if obj is None:
            return None, etag
        return obj.body, obj.etag

    def verify_command(
        self, raw: bytes, worker: str, scheduler_keys: KeyRing
    ) -> Signed[WorkerCommand]:
        """Signed by the scheduler side, bound to this worker's name, naming it in its body."""
        key = self.layout.command(worker)
        signed = decode_signed(
            raw, WorkerCommand, scheduler_keys, bind=self.bind(worker=worker), key=key
        )
        if signed.model.worker != worker:
            raise ProtocolError(f"command names worker {signed.model.worker!r}", key=key)
        return signed

    def delete_command(self, worker: str) -> None:
        self.store.delete(self.layout.command(worker))

    def put_fleet_snapshot(self, snapshot: FleetSnapshot, key: SigningKey) -> None:
        bind = self.bind(owner=snapshot.owner)
        body = encode_signed(snapshot, key, bind=bind, ttl=FLEET_TTL)
        self.store.put(self.layout.fleet_snapshot(snapshot.owner), body, content_type=JOSE)

    def list_fleet_snapshots(self) -> list[Entry]:
        return list(self.store.list_all(self.layout.fleet_snapshots))

    def read_fleet_snapshot(self, object_key: str, scheduler_keys: KeyRing) -> FleetSnapshot:
        """A snapshot, verified: signed by the scheduler side and bound to its owner's key."""
        owner = self.layout.parse_fleet_snapshot(object_key)
        raw = self.store.get(object_key, max_bytes=FleetSnapshot.MAX_BYTES * 2).body
        signed = decode_signed(
            raw, FleetSnapshot, scheduler_keys, bind=self.bind(owner=owner), key=object_key
        )
        if signed.model.owner != owner:
            raise ProtocolError(f"fleet snapshot names {signed.model.owner!r}", key=object_key)
        return signed.model

    # -- results and revocations -------------------------------------------------------------

    def put_result(self, result: JobResult, key: SigningKey) -> None:
        body = encode_signed(result, key, bind=self.bind(job_id=result.job_id), ttl=RECORD_TTL)
        self.store.put(self.layout.result(result.job_id, key.kid), body, content_type=JOSE)

    def read_result(self, job_id: str, kid: str, worker_keys: KeyRing) -> Signed[JobResult]:
        """The result signed by ``kid`` (the claim holder's key): one signed by another key
        at its place is refused as a bad signature."""
        signed = self._read(
            self.layout.result(job_id, kid), JobResult, worker_keys, self.bind(job_id=job_id)
        )
        if signed.kid != kid:
            raise VerificationError(Reason.BAD_SIGNATURE, f"result signed by {signed.kid}")
        return signed

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

    # -- logs ----------------------------------------------------------------------------------

    def _log_bind(self, ti: TaskCoordinates, job_id: str, seq: int) -> dict[str, str]:
        return self.bind(
            job_id=job_id,
            seq=str(seq),
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=str(ti.map_index),
            try_number=str(ti.try_number),
        )

    def encode_log_chunk(
        self,
        ti: TaskCoordinates,
        job_id: str,
        seq: int,
        data: bytes,
        seal_key: str,
        key: SigningKey,
    ) -> bytes:
        """Chunk ``seq`` of a job's log, sealed to ``seal_key`` (the manifest's) and signed by
        ``key`` (the claim holder's): the bytes ``put_log_chunk`` creates."""
        sealed = seal(data, seal_key, context=self.log_context(ti, job_id, seq))
        chunk = LogChunk(job_id=job_id, seq=seq, sealed=sealed)
        return encode_signed(chunk, key, bind=self._log_bind(ti, job_id, seq), ttl=LOG_TTL)

    def put_log_chunk(self, ti: TaskCoordinates, job_id: str, seq: int, body: bytes) -> None:
        """Create chunk ``seq`` once (If-None-Match): no later writer, a replay of the job
        included, replaces it. Finding these very bytes there (an earlier attempt whose answer
        was lost) is success; anything else there raises AlreadyExists."""
        key = self.layout.log_chunk(ti, job_id, seq)
        try:
            self.store.create(key, body, content_type=JOSE)
        except AlreadyExists:
            try:
                current = self.store.get(key, max_bytes=len(body))
            except ProtocolError:  # larger than ours: not ours
                raise AlreadyExists("another object holds this log chunk", key=key) from None
            if current.body != body:
                raise

    def verify_log_chunk(
        self, raw: bytes, ti: TaskCoordinates, job_id: str, seq: int, worker_keys: KeyRing
    ) -> Signed[LogChunk]:
        """Verify a chunk against the place it was found at: signed by a trusted worker key
        (the caller checks it is the claim holder's), bound to that try, job and seq."""
        key = self.layout.log_chunk(ti, job_id, seq)
        bind = self._log_bind(ti, job_id, seq)
        signed = decode_signed(raw, LogChunk, worker_keys, bind=bind, key=key)
        if signed.model.job_id != job_id or signed.model.seq != seq:
            raise ProtocolError(
                f"log chunk names job {signed.model.job_id} seq {signed.model.seq}", key=key
            )
        return signed

    def read_claim_holder(
        self, job_id: str, worker_keys: KeyRing, scheduler_keys: KeyRing
    ) -> tuple[Signed[Claim], JobManifest]:
        """The job's durable claim (who holds the job) and the manifest it embeds, both
        verified. The manifest is checked as of the claim: it expires after manifest_ttl, and
        the claim is the record that it was valid when the worker claimed it."""
        claim = self.read_claim(job_id, worker_keys)
        if claim.model.job_id != job_id:
            raise ProtocolError(
                f"claim names job {claim.model.job_id}", key=self.layout.claim(job_id)
            )
        manifest = decode_signed(
            claim.model.manifest.encode(),
            JobManifest,
            scheduler_keys,
            bind=self.bind(queue=claim.model.queue, job_id=job_id),
            key=self.layout.claim(job_id),
            now=claim.issued_at,
        )
        return claim, manifest.model
