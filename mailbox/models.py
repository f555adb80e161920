"""The wire models: one pydantic model per kind of object in the bucket.

Every model has a ``schema_version`` "MAJOR.MINOR". A reader accepts its own major version
only (an unknown major is a clear ProtocolError); fields added by a newer minor version are
dropped, while an unknown field in a same-or-older minor version is an error, so typos and
tampering are caught but rolling upgrades work. Every kind has a size limit, checked before
anything is parsed.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_mailbox.mailbox.errors import ProtocolError
from edge_mailbox.mailbox.layout import MAX_QUEUE_NAME, MAX_WORKER_NAME
from edge_mailbox.signer import strictjson
from edge_mailbox.signer.envelope import MAX_TOKEN_BYTES

M = TypeVar("M", bound="WireModel")
_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})$")
JOB_ID = r"^[0-9a-f]{28}$"
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
KiB = 1024
# Seconds since 1970, finite and before the year 5138: arithmetic on a signed time (an
# elapsed time, a timedelta for a metric) can never overflow.
Timestamp = Annotated[float, Field(ge=0, le=1e11)]


class WireModel(BaseModel):
    """Base of every object kind: versioned, strict, size-limited."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    KIND: ClassVar[str]
    SCHEMA_MAJOR: ClassVar[int] = 1
    SCHEMA_MINOR: ClassVar[int] = 0
    MAX_BYTES: ClassVar[int] = 64 * KiB

    schema_version: str = "1.0"

    def __init__(self, **data: Any) -> None:
        data.setdefault("schema_version", f"{self.SCHEMA_MAJOR}.{self.SCHEMA_MINOR}")
        super().__init__(**data)

    @classmethod
    def from_dict(cls: type[M], data: Any, *, key: str | None = None) -> M:
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.KIND}: expected a JSON object", key=key)
        version = data.get("schema_version")
        match = _VERSION.match(version) if isinstance(version, str) else None
        if not match:
            raise ProtocolError(f"{cls.KIND}: missing or malformed schema_version", key=key)
        major, minor = int(match.group(1)), int(match.group(2))
        if major != cls.SCHEMA_MAJOR:
            raise ProtocolError(
                f"{cls.KIND}: schema version {version} is not supported "
                f"(this edge-mailbox reads {cls.SCHEMA_MAJOR}.x)",
                key=key,
            )
        if minor > cls.SCHEMA_MINOR:
            data = {k: v for k, v in data.items() if k in cls.model_fields}
        try:
            # JSON-mode validation: strict types, but enums and numbers as JSON spells them.
            return cls.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(object)'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise ProtocolError(f"{cls.KIND}: invalid ({problems})", key=key) from None

    @classmethod
    def from_json(cls: type[M], raw: bytes | str, *, key: str | None = None) -> M:
        size = len(raw)
        if size > cls.MAX_BYTES:
            raise ProtocolError(f"{cls.KIND}: {size} bytes, limit {cls.MAX_BYTES}", key=key)
        try:
            data = strictjson.loads(raw)
        except ValueError as exc:
            raise ProtocolError(f"{cls.KIND}: not JSON ({exc})", key=key) from None
        return cls.from_dict(data, key=key)

    def to_json(self) -> bytes:
        raw = self.model_dump_json().encode()
        if len(raw) > self.MAX_BYTES:
            raise ProtocolError(f"{self.KIND}: {len(raw)} bytes, limit {self.MAX_BYTES}")
        return raw


class ConnectionTest(BaseModel):
    """Airflow's TestConnection workload as a manifest carries it: which test (its id, the
    Execution API's ``connection-tests/{id}`` and the token's subject), of which connection,
    for how long. The connection itself is never in it: the worker fetches it through the
    relay, sealed to its own key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(pattern=UUID)
    connection_id: str = Field(min_length=1, max_length=250)
    timeout: int = Field(ge=1, le=86_400)


class JobManifest(WireModel):
    """What a worker needs to run one enqueue of a task instance (``ti``), of an executor
    callback (``callback``: id, fetch_method, data; ``ti`` empty) or of a connection test
    (``connection_test``; no ``ti``, DAG file or bundle). Never the token."""

    KIND = "job"
    SCHEMA_MINOR = 2
    MAX_BYTES = 256 * KiB

    job_id: str = Field(pattern=JOB_ID)
    queue: str = Field(min_length=1, max_length=MAX_QUEUE_NAME)
    enqueued_at: Timestamp
    ti: dict[str, Any] = Field(default_factory=dict)
    callback: dict[str, Any] | None = None
    dag_rel_path: str = Field(default="", max_length=4096)  # required unless a connection test
    bundle_info: dict[str, Any] = Field(default_factory=dict)
    log_path: str | None = Field(default=None, max_length=4096)
    pool_slots: int = Field(default=1, ge=1, le=10_000)
    priority: int = 1
    seal_key: str = Field(min_length=43, max_length=43, description="scheduler's per-job X25519")
    scheduler_version: str = Field(max_length=64)
    # 1.1: the task asked (executor_config) to start in a new Python process, not forked from
    # the worker (threads started at import, CUDA, native libraries that do not survive a fork).
    fresh_interpreter: bool = False
    # 1.2: a connection test (Airflow's TestConnection workload) instead of a task.
    connection_test: ConnectionTest | None = None

    @model_validator(mode="after")
    def _one_workload(self) -> JobManifest:
        """A connection test runs no DAG code: it comes alone. Anything else runs a DAG file."""
        if self.connection_test is not None:
            if self.ti or self.callback is not None:
                raise ValueError("a connection test comes without ti or callback")
        elif not self.dag_rel_path:
            raise ValueError("dag_rel_path is required for a task or callback")
        return self

    @property
    def subject_id(self) -> str:
        """Whose job this is for the Execution API: the task instance's, callback's or
        connection test's id."""
        if self.connection_test:
            return self.connection_test.id
        return str(self.callback["id"] if self.callback else self.ti["id"])

    def describe(self) -> str:
        if self.connection_test:
            return f"connection test of {self.connection_test.connection_id} ({self.subject_id})"
        if self.callback:
            return f"callback {self.callback.get('data', {}).get('path', '')} ({self.subject_id})"
        ti = self.ti
        where = f"run {ti.get('run_id')} try {ti.get('try_number')}"
        return f"{ti.get('dag_id')}.{ti.get('task_id')} {where}"


class ChangeMarker(WireModel):
    """A change marker ("doorbell"): rewritten with a fresh nonce whenever what it watches
    changes: a queue's jobs (``scope`` = the queue name) or the inbox (``scope`` = "inbox").

    Readers poll it with a conditional GET (a 304 costs a twelfth of a LIST on S3) and LIST
    only when it changed. Unsigned on purpose: it carries no authority, and a forged marker
    costs a reader one LIST, nothing more.
    """

    KIND = "marker"
    MAX_BYTES = 4 * KiB

    scope: str = Field(min_length=1, max_length=MAX_QUEUE_NAME)
    updated_at: Timestamp
    nonce: str = Field(min_length=8, max_length=64)


class Claim(WireModel):
    """A worker's claim of a job: created with If-None-Match, so exactly one exists.

    It embeds the scheduler-signed manifest it claims, so the scheduler side can rebuild
    everything about the job from the claim alone (after a restart, the queue entry gone)
    without trusting anything the worker says about which task instance it runs.
    """

    KIND = "claim"
    MAX_BYTES = 640 * KiB

    job_id: str = Field(pattern=JOB_ID)
    queue: str = Field(min_length=1, max_length=MAX_QUEUE_NAME)
    worker: str = Field(min_length=1, max_length=MAX_WORKER_NAME)
    seal_key: str = Field(min_length=43, max_length=43, description="worker's per-job X25519")
    claimed_at: Timestamp
    nonce: str = Field(min_length=8, max_length=64)
    worker_version: str = Field(max_length=64)
    manifest: str = Field(min_length=1, max_length=600 * KiB)


# The largest HTTP body a relayed call or answer carries. The body is base64url'd into the
# RelayCall, the sealed call into the RelayRequest and that into the signed envelope, which
# may not exceed MAX_TOKEN_BYTES: 64/27 of the body, with room left for path, query, headers.
MAX_RELAY_BODY = MAX_TOKEN_BYTES * 27 // 64 - 64 * KiB
# A signed object may be twice its kind's MAX_BYTES (codec.py): the relay's kinds are set so
# that this is the envelope's own limit, and their plaintexts to what fits sealed inside.
_RELAY_SIGNED_BYTES = MAX_TOKEN_BYTES // 2
_RELAY_PLAIN_BYTES = MAX_TOKEN_BYTES * 9 // 16


class RelayCall(WireModel):
    """Plaintext of a relay request: one Execution API call. Travels only sealed."""

    KIND = "relay-call"
    MAX_BYTES = _RELAY_PLAIN_BYTES

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
    path: str = Field(min_length=1, max_length=8192)
    query: str = Field(default="", max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = Field(default="", description="base64url")


class RelayAnswer(WireModel):
    """Plaintext of a relay response. Travels only sealed; never holds a token."""

    KIND = "relay-answer"
    MAX_BYTES = _RELAY_PLAIN_BYTES

    status: int = Field(ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = Field(default="", description="base64url")


class RelayRequest(WireModel):
    """A worker's Execution API call, sealed to the scheduler side's per-job key.

    ``awaited`` False (schema 1.1): the worker answered the call itself and does not poll
    for the response, because the Task SDK does not use it (rendered fields, a terminal
    state). The reconciler still replays it, in order with the job's other calls and before
    the job's result, and still writes the response (the record that it was replayed)."""

    KIND = "relay-request"
    SCHEMA_MINOR = 1
    MAX_BYTES = _RELAY_SIGNED_BYTES

    job_id: str = Field(pattern=JOB_ID)
    request_id: str = Field(pattern=JOB_ID)
    sent_at: Timestamp
    sealed: str
    awaited: bool = True


class RelayResponse(WireModel):
    """The scheduler side's answer, sealed to the claiming worker's per-job key."""

    KIND = "relay-response"
    MAX_BYTES = _RELAY_SIGNED_BYTES

    job_id: str = Field(pattern=JOB_ID)
    request_id: str = Field(pattern=JOB_ID)
    answered_at: Timestamp
    sealed: str


class JobState(str, enum.Enum):
    SUCCESS = "success"
    FAILED = "failed"


class JobResult(WireModel):
    """How the task's supervisor ended on the worker."""

    KIND = "result"
    MAX_BYTES = 16 * KiB

    job_id: str = Field(pattern=JOB_ID)
    worker: str = Field(min_length=1, max_length=MAX_WORKER_NAME)
    state: JobState = Field(strict=False)
    exit_code: int | None = None
    started_at: Timestamp
    finished_at: Timestamp
    message: str = Field(default="", max_length=4096)
    log_chunks: int = Field(default=0, ge=0)


class WorkerState(str, enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    MAINTENANCE_PENDING = "maintenance pending"
    MAINTENANCE = "maintenance"
    STOPPING = "stopping"
    OFFLINE = "offline"


class MaintenanceSource(str, enum.Enum):
    """Who holds a worker in maintenance: its host (``edge-mailbox-worker maintenance``) or
    the scheduler side (a WorkerCommand). It stays in maintenance while either does."""

    LOCAL = "local"
    REMOTE = "remote"


class Heartbeat(WireModel):
    """A worker's liveness and state; LastModified of the object is the liveness clock."""

    KIND = "heartbeat"
    SCHEMA_MINOR = 1
    MAX_BYTES = 64 * KiB

    worker: str = Field(min_length=1, max_length=MAX_WORKER_NAME)
    state: WorkerState = Field(strict=False)
    queues: list[str] = Field(max_length=256)
    concurrency: int = Field(ge=1)
    free_slots: int = Field(ge=0)
    running_jobs: list[str] = Field(default_factory=list, max_length=10_000)
    version: str = Field(max_length=64)
    maintenance_comment: str = Field(default="", max_length=1024)
    metrics: dict[str, float] = Field(default_factory=dict)
    sent_at: Timestamp
    # 1.1: what the fleet dashboard shows and the CLI's --wait waits for.
    started_at: Timestamp | None = None
    command_seq: int = Field(default=0, ge=0, description="the newest WorkerCommand applied")
    maintenance_by: list[Annotated[MaintenanceSource, Field(strict=False)]] = Field(
        default_factory=list, max_length=2
    )
    # Bucket requests since start, by kind (GET, PUT, LIST, ...): the cost view.
    requests: dict[str, int] = Field(default_factory=dict, max_length=32)


class WorkerCommand(WireModel):
    """The whole desired state of one worker, signed by the scheduler side: not a change, so
    the newest command alone says what the worker should be, and a lost one costs nothing.
    ``seq`` only grows; a worker applies a command only if its ``seq`` is above the one it
    applied last (kept in its run folder across restarts). ``shutdown`` stops (drains) the
    worker processes started before ``issued_at``, not the next one started."""

    KIND = "command"
    MAX_BYTES = 16 * KiB

    worker: str = Field(min_length=1, max_length=MAX_WORKER_NAME)
    seq: int = Field(ge=1)
    maintenance: bool = False
    comment: str = Field(default="", max_length=1024)
    shutdown: bool = False
    queues: list[Annotated[str, Field(min_length=1, max_length=MAX_QUEUE_NAME)]] = Field(
        min_length=1, max_length=256
    )
    concurrency: int = Field(ge=1, le=1024)
    issued_by: str = Field(min_length=1, max_length=256)
    issued_at: Timestamp


class _Part(BaseModel):
    """A part of a larger object: strict like a WireModel, without a version of its own."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class FleetWorker(_Part):
    """A heartbeat the scheduler side verified, with its liveness clock."""

    heartbeat: Heartbeat
    kid: str = Field(max_length=64)
    seen: Timestamp  # LastModified of the heartbeat object when the reconciler first read it
    alive: bool


class FleetJob(_Part):
    """One job as the reconciler that queued or rebuilt it knows it."""

    job_id: str = Field(pattern=JOB_ID)
    queue: str = Field(max_length=MAX_QUEUE_NAME)
    phase: str = Field(max_length=32)
    ti: dict[str, str | int] = Field(default_factory=dict, max_length=8)  # dag/run/task/map/try
    worker: str | None = Field(default=None, max_length=MAX_WORKER_NAME)
    enqueued_at: Timestamp
    claimed_at: Timestamp | None = None
    finished_at: Timestamp | None = None


class FleetQueue(_Part):
    queue: str = Field(max_length=MAX_QUEUE_NAME)
    pending: int = Field(ge=0)
    oldest_enqueued_at: Timestamp | None = None


class FleetSnapshot(WireModel):
    """What one reconciler knows of the fleet, written every ``fleet_snapshot_interval``:
    the workers it verified, its jobs, its queues and its own bucket requests. The dashboard
    draws from these (one GET per scheduler) and one LIST of the heartbeats, never a GET per
    worker. Signed by the scheduler side: what the page shows is what the reconciler
    verified, not what anyone who can write to the bucket put there."""

    KIND = "fleet"
    MAX_BYTES = 1536 * KiB

    owner: str = Field(min_length=1, max_length=256)
    written_at: Timestamp
    started_at: Timestamp
    workers: list[FleetWorker] = Field(default_factory=list, max_length=5000)
    jobs: list[FleetJob] = Field(default_factory=list, max_length=5000)
    queues: list[FleetQueue] = Field(default_factory=list, max_length=1000)
    requests: dict[str, int] = Field(default_factory=dict, max_length=32)


class Revocation(WireModel):
    """The scheduler side withdraws a job: not to be started, and killed if running."""

    KIND = "revocation"
    MAX_BYTES = 4 * KiB

    job_id: str = Field(pattern=JOB_ID)
    reason: str = Field(max_length=1024)
    revoked_at: Timestamp


class LogChunk(WireModel):
    """A piece of a task's log: sealed to the scheduler side's per-job key (the manifest's
    ``seal_key``) and signed by the worker that holds the job's claim. Its binding names the
    place (job, ``seq`` and the task-instance try), so a chunk moved elsewhere is refused;
    the signature, checked against the claim's, keeps other bucket writers out of the log."""

    KIND = "log-chunk"
    MAX_BYTES = 2 * 1024 * KiB  # signed, twice that: the envelope's own limit

    job_id: str = Field(pattern=JOB_ID)
    seq: int = Field(ge=0)
    sealed: str = Field(min_length=1, description="base64url HPKE of the log's bytes")


ALL_KINDS: tuple[type[WireModel], ...] = (
    JobManifest,
    ChangeMarker,
    Claim,
    RelayCall,
    RelayAnswer,
    RelayRequest,
    RelayResponse,
    JobResult,
    Heartbeat,
    WorkerCommand,
    FleetSnapshot,
    Revocation,
    LogChunk,
)
