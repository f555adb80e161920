"""The bucket's key layout: every key edge-mailbox reads or writes is built here, and only here.

All keys live under ``{prefix}/v1/``; see docs/protocol.md for the listing of a live bucket.
Names chosen by users (queues, workers) are escaped into a small safe alphabet so that any
string Airflow allows maps to a key that every S3 tool, policy and shell handles.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = "v1"
MAX_QUEUE_NAME = 256
MAX_WORKER_NAME = 256
MAX_AIRFLOW_ID = 250
# Escaped names longer than this are shortened with a hash, keeping keys well under S3's
# 1,024-byte limit whatever the prefix and the characters of the name.
_MAX_ENCODED = 120
_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_JOB_ID = re.compile(r"^[0-9a-f]{12}[0-9a-f]{16}$")
_REQUEST_ID = re.compile(r"^[0-9a-f]{12}[0-9a-f]{16}$")
# The objects of a job's folder, by what follows ``jobs/{job_id}/`` in their keys.
_JOB_OBJECTS = {
    "claim": r"claim\.jws",
    "result": r"results/[A-Za-z0-9_-]{1,64}\.jws",
    "revocation": r"revoked\.jws",
    "lease": r"taken/[0-9a-f]{28}\.json",
    "response": r"responses/[0-9a-f]{28}\.jws",
}
# Priority is clamped to Airflow's int32 range and inverted, so that ascending key order (the
# only order LIST has) yields the highest priority first, then the oldest.
_PRIORITY_MAX = 2**31 - 1
_PRIORITY_MIN = -(2**31)


def encode_name(name: str, *, kind: str = "queue", limit: int = MAX_QUEUE_NAME) -> str:
    """Map a queue or worker name to a key segment, injectively.

    ``[A-Za-z0-9_-]`` stay as they are; every other UTF-8 byte becomes ``.`` and two hex
    digits (``gpu.large`` -> ``gpu.2elarge``). An escaped name over 120 characters is cut
    and suffixed with ``~`` and a SHA-256 digest; ``~`` never appears otherwise, so a
    shortened name cannot collide with an escaped one.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string")
    if len(name) > limit:
        raise ValueError(f"{kind} name is {len(name)} characters; the limit is {limit}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"{kind} name {name!r} contains control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{kind} name {name!r} is not valid Unicode text") from None
    out = []
    for char in name:
        if _PLAIN.fullmatch(char):
            out.append(char)
        else:
            out.extend(f".{byte:02x}" for byte in char.encode("utf-8"))
    encoded = "".join(out)
    if len(encoded) > _MAX_ENCODED:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
        encoded = f"{encoded[:80]}~{digest}"
    return encoded


def decode_name(segment: str) -> str | None:
    """Reverse ``encode_name``; None for a shortened (hashed) segment, which cannot be reversed."""
    if "~" in segment:
        return None
    data = bytearray()
    i = 0
    while i < len(segment):
        if segment[i] == ".":
            data.append(int(segment[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(segment[i].encode())
            i += 1
    return data.decode("utf-8")


def new_id(now: float | None = None) -> str:
    """A 28-hex-digit id that sorts by creation time (milliseconds, then 64 random bits)."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{os.urandom(8).hex()}"


def id_time(id_: str) -> float:
    """When an id of ``new_id`` was made, in seconds since the epoch (its first 12 digits)."""
    if not isinstance(id_, str) or not _JOB_ID.fullmatch(id_):
        raise ValueError(f"malformed id {id_!r}")
    return int(id_[:12], 16) / 1000


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"malformed job id {job_id!r}")
    return job_id


def check_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"malformed request id {request_id!r}")
    return request_id


def priority_order(priority: int, enqueued_at: float) -> str:
    """The sortable part of a manifest key: inverted priority, then enqueue time."""
    clamped = min(max(int(priority), _PRIORITY_MIN), _PRIORITY_MAX)
    inverted = _PRIORITY_MAX - clamped
    return f"{inverted:010d}-{int(enqueued_at * 1000):013d}"


@dataclass(frozen=True)
class TaskCoordinates:
    """Which task-instance try a log belongs to: what the Airflow UI knows when it asks."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1

    @classmethod
    def of_ti(cls, ti: Mapping[str, Any]) -> TaskCoordinates:
        """The try a manifest's TaskInstance DTO (``JobManifest.ti``) names: where its log
        goes, and what a log reader checks a job's claim against."""
        map_index = ti.get("map_index")
        return cls(
            dag_id=ti["dag_id"],
            run_id=ti["run_id"],
            task_id=ti["task_id"],
            map_index=-1 if map_index is None else int(map_index),
            try_number=int(ti["try_number"]),
        )


@dataclass(frozen=True)
class ManifestKey:
    """What a manifest's key says about it, before its body is even fetched."""

    queue_segment: str
    priority: int
    enqueued_ms: int
    job_id: str


@dataclass(frozen=True)
class Layout:
    """Builds and parses the keys under one configurable prefix."""

    prefix: str = "edge-mailbox"

    def __post_init__(self) -> None:
        cleaned = self.prefix.strip("/")
        if not cleaned or "//" in cleaned or any(ord(c) < 0x20 for c in cleaned):
            raise ValueError(f"invalid bucket prefix {self.prefix!r}")
        object.__setattr__(self, "prefix", cleaned)

    @property
    def root(self) -> str:
        return f"{self.prefix}/{PROTOCOL_VERSION}/"

    # Queues: what workers poll.
    @property
    def queues(self) -> str:
        return f"{self.root}queues/"

    def queue_root(self, queue: str) -> str:
        return f"{self.queues}{encode_name(queue)}/"

    def parse_queue_key(self, key: str) -> str:
        """The queue segment (``encode_name``'s) of any key in a queue's folder."""
        segment, slash, rest = key.removeprefix(self.queues).partition("/")
        if not key.startswith(self.queues) or not segment or not slash or not rest:
            raise ValueError(f"{key!r} is not in a queue's folder under {self.queues}")
        return segment

    @property
    def queues_marker(self) -> str:
        """Rung with every queue marker: an idle worker polls this one object, however many
        queues it serves, and looks at its queues' own markers only when it changed."""
        return f"{self.root}queues.marker.json"

    def queue_marker(self, queue: str) -> str:
        return f"{self.queue_root(queue)}marker.json"

    def queue_jobs(self, queue: str) -> str:
        return f"{self.queue_root(queue)}jobs/"

    def manifest(self, queue: str, job_id: str, priority: int, enqueued_at: float) -> str:
        order = priority_order(priority, enqueued_at)
        return f"{self.queue_jobs(queue)}{order}-{check_job_id(job_id)}.jws"

    def parse_manifest(self, key: str) -> ManifestKey:
        """Split a manifest key; raise ValueError for anything that is not one."""
        if not key.startswith(f"{self.root}queues/"):
            raise ValueError(f"{key!r} is not under {self.root}queues/")
        rest = key[len(f"{self.root}queues/") :]
        segment, _, tail = rest.partition("/jobs/")
        match = re.fullmatch(r"(\d{10})-(\d{13})-([0-9a-f]{28})\.jws", tail)
        if not segment or not match:
            raise ValueError(f"{key!r} is not a manifest key")
        return ManifestKey(
            queue_segment=segment,
            priority=_PRIORITY_MAX - int(match.group(1)),
            enqueued_ms=int(match.group(2)),
            job_id=match.group(3),
        )

    # Jobs: the durable record of one enqueue, written by whoever owns each part.
    @property
    def jobs(self) -> str:
        return f"{self.root}jobs/"

    def job_root(self, job_id: str) -> str:
        return f"{self.jobs}{check_job_id(job_id)}/"

    def jobs_since(self, at: float) -> str:
        """A LIST's start-after in jobs/: the folders of jobs created at ``at`` or later (job
        ids begin with their creation time) sort after it, all older ones before."""
        return f"{self.jobs}{new_id(at)[:12]}"

    def parse_job_key(self, key: str) -> tuple[str, str | None]:
        """(job id, kind) of a key in a job's folder. The kind is claim, result, revocation,
        lease or response; None for an object the protocol never writes there (a stray one,
        still the job's). ValueError for a key that is in no job's folder."""
        match = re.fullmatch(rf"{re.escape(self.jobs)}([0-9a-f]{{28}})/(.+)", key, re.DOTALL)
        if not match:
            raise ValueError(f"{key!r} is not in a job's folder under {self.jobs}")
        for kind, pattern in _JOB_OBJECTS.items():
            if re.fullmatch(pattern, match.group(2)):
                return match.group(1), kind
        return match.group(1), None

    def claim(self, job_id: str) -> str:
        return f"{self.job_root(job_id)}claim.jws"

    def result(self, job_id: str, kid: str) -> str:
        """One result per signer: a result another key writes for the job never replaces
        the claim holder's, which the scheduler side reads by the claim's key id."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", kid):
            raise ValueError(f"malformed key id {kid!r}")
        return f"{self.job_root(job_id)}results/{kid}.jws"

    def revocation(self, job_id: str) -> str:
        return f"{self.job_root(job_id)}revoked.jws"

    def relay_lease(self, job_id: str, request_id: str) -> str:
        """Taken by the reconciler that replays a request: with several schedulers (or an old
        and a new one overlapping), one request is executed by one of them only."""
        return f"{self.job_root(job_id)}taken/{check_request_id(request_id)}.json"

    def relay_responses(self, job_id: str) -> str:
        return f"{self.job_root(job_id)}responses/"

    def relay_response(self, job_id: str, request_id: str) -> str:
        return f"{self.relay_responses(job_id)}{check_request_id(request_id)}.jws"

    def parse_relay_response(self, key: str) -> str:
        """The request id of a response key; ValueError for anything else."""
        match = re.fullmatch(
            r"([0-9a-f]{28})/responses/([0-9a-f]{28})\.jws", key[len(self.root + "jobs/") :]
        )
        if not key.startswith(f"{self.root}jobs/") or not match:
            raise ValueError(f"{key!r} is not a relay response key")
        return match.group(2)

    # Inbox: everything the scheduler side must act on, deleted once acted on, so that one
    # LIST page per poll finds all pending work however many jobs ever ran.
    @property
    def inbox(self) -> str:
        return f"{self.root}inbox/"

    @property
    def inbox_marker(self) -> str:
        """Rung after every inbox write; outside inbox/ so that LISTs of it stay pure."""
        return f"{self.root}inbox.marker.json"

    def inbox_claim(self, job_id: str) -> str:
        return f"{self.inbox}{check_job_id(job_id)}/claim.jws"

    def inbox_result(self, job_id: str) -> str:
        return f"{self.inbox}{check_job_id(job_id)}/result.jws"

    def inbox_request(self, job_id: str, request_id: str) -> str:
        return f"{self.inbox}{check_job_id(job_id)}/request-{check_request_id(request_id)}.jws"

    def parse_inbox(self, key: str) -> tuple[str, str, str | None]:
        """(job_id, kind, request_id) of an inbox key; kind is claim, result or request."""
        if not key.startswith(self.inbox):
            raise ValueError(f"{key!r} is not in the inbox")
        match = re.fullmatch(
            r"([0-9a-f]{28})/(claim|result|request-([0-9a-f]{28}))\.jws", key[len(self.inbox) :]
        )
        if not match:
            raise ValueError(f"{key!r} is not an inbox key")
        kind = "request" if match.group(3) else match.group(2)
        return match.group(1), kind, match.group(3)

    # Logs: sealed chunks in upload order, one folder per task-instance try and job, so that a
    # reader that knows only the task instance (the UI) finds them with one LIST. Kept apart
    # from protocol objects because they have their own retention.
    def log_root(self, ti: TaskCoordinates, job_id: str | None = None) -> str:
        parts = [
            encode_name(ti.dag_id, kind="dag_id", limit=MAX_AIRFLOW_ID),
            encode_name(ti.run_id, kind="run_id", limit=MAX_AIRFLOW_ID),
            encode_name(ti.task_id, kind="task_id", limit=MAX_AIRFLOW_ID),
            f"map={ti.map_index}",
            f"try={ti.try_number}",
        ]
        root = f"{self.root}logs/{'/'.join(parts)}/"
        return f"{root}{check_job_id(job_id)}/" if job_id else root

    def log_chunk(self, ti: TaskCoordinates, job_id: str, seq: int) -> str:
        if seq < 0:
            raise ValueError("log chunk sequence must be >= 0")
        return f"{self.log_root(ti, job_id)}{seq:08d}.chunk"

    def parse_log_chunk(self, key: str, ti: TaskCoordinates) -> tuple[str, int]:
        """(job id, seq) of one of ``ti``'s log chunks; ValueError for any other key."""
        root = self.log_root(ti)
        match = re.fullmatch(r"([0-9a-f]{28})/(\d{8,})\.chunk", key.removeprefix(root))
        if not key.startswith(root) or not match:
            raise ValueError(f"{key!r} is not a log chunk of {root}")
        return match.group(1), int(match.group(2))

    # Workers: liveness in one flat folder (one LIST page shows 1,000 workers by
    # LastModified), and one command object per worker polled with a conditional GET.
    @property
    def heartbeats(self) -> str:
        return f"{self.root}workers/"

    def heartbeat(self, worker: str) -> str:
        return f"{self.heartbeats}{encode_name(worker, kind='worker', limit=MAX_WORKER_NAME)}.jws"

    def parse_heartbeat(self, key: str) -> str | None:
        """The worker name of a heartbeat key (None for a hashed, irreversible name)."""
        return decode_name(self.heartbeat_segment(key))

    def heartbeat_segment(self, key: str) -> str:
        """The worker's escaped name in a heartbeat key: all there is of a hashed name."""
        segment = key.removeprefix(self.heartbeats).removesuffix(".jws")
        well_formed = key.startswith(self.heartbeats) and key.endswith(".jws")
        if not well_formed or not re.fullmatch(r"[A-Za-z0-9_.~-]+", segment):
            raise ValueError(f"{key!r} is not a heartbeat key")
        return segment

    def command(self, worker: str) -> str:
        """The worker's desired state, written by the scheduler side (WorkerCommand)."""
        name = encode_name(worker, kind="worker", limit=MAX_WORKER_NAME)
        return f"{self.root}commands/{name}.jws"

    # What each reconciler knows of the fleet, for the dashboard: one object per scheduler.
    @property
    def fleet_snapshots(self) -> str:
        return f"{self.root}fleet/"

    def fleet_snapshot(self, owner: str) -> str:
        return f"{self.fleet_snapshots}{encode_name(owner, kind='scheduler', limit=256)}.jws"

    def parse_fleet_snapshot(self, key: str) -> str:
        """The owner of a fleet snapshot key; ValueError for any other key."""
        segment = key.removeprefix(self.fleet_snapshots).removesuffix(".jws")
        owner = decode_name(segment) if re.fullmatch(r"[A-Za-z0-9_.-]+", segment) else None
        if not key.startswith(self.fleet_snapshots) or not key.endswith(".jws") or not owner:
            raise ValueError(f"{key!r} is not a fleet snapshot key")
        return owner

    def check_probe(self, token: str) -> str:
        """Where ``airflow edge-mailbox check`` proves conditional writes, then deletes."""
        if not re.fullmatch(r"[0-9a-f]{32}", token):
            raise ValueError(f"malformed probe token {token!r}")
        return f"{self.root}check/{token}"
