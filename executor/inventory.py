"""What is in the bucket, for operators: workers, queues, recent jobs. Used by the
``airflow edge-mailbox workers|queues|jobs|sweep`` commands; each function costs a few LISTs
and, where a body must be read, one GET per object it reports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import decode_name, id_time
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, VerificationError


@dataclass
class WorkerRow:
    worker: str
    state: str
    queues: str
    slots: str
    running: int
    last_heartbeat_age: float
    version: str
    comment: str
    maintenance_by: str = ""  # local, remote: who holds it in maintenance
    command: int = 0  # the newest scheduler-side command it applied


@dataclass
class QueueRow:
    queue: str
    pending: int
    oldest_age: float | None


@dataclass
class JobRow:
    job_id: str
    task: str
    queue: str
    state: str
    worker: str
    age: float


def workers(mailbox: Mailbox, worker_keys: KeyRing, timeout: float) -> list[WorkerRow]:
    rows = []
    now = time.time()
    layout = mailbox.layout
    for entry in mailbox.list_heartbeats():
        age = now - entry.last_modified.timestamp()
        try:  # a hashed name cannot be decoded: its segment is all there is to show
            name = layout.parse_heartbeat(entry.key) or layout.heartbeat_segment(entry.key)
        except ValueError:
            rows.append(WorkerRow(entry.key, "not a heartbeat", "", "", 0, age, "", ""))
            continue
        try:
            hb = mailbox.read_heartbeat(name, worker_keys).model
        except (VerificationError, ProtocolError, NotFound) as exc:
            rows.append(WorkerRow(name, f"unverified: {exc}", "", "", 0, age, "", ""))
            continue
        state = hb.state.value if age <= timeout else "unknown (no heartbeat)"
        rows.append(
            WorkerRow(
                name,
                state,
                ",".join(hb.queues),
                f"{hb.concurrency - hb.free_slots}/{hb.concurrency}",
                len(hb.running_jobs),
                age,
                hb.version,
                hb.maintenance_comment,
                ",".join(source.value for source in hb.maintenance_by),
                hb.command_seq,
            )
        )
    return rows


def queues(mailbox: Mailbox) -> list[QueueRow]:
    """Pending (unclaimed) jobs per queue and the age of the oldest, from LIST alone."""
    now = time.time()
    found: dict[str, QueueRow] = {}
    for entry in mailbox.store.list_all(mailbox.layout.queues):
        try:
            segment = mailbox.layout.parse_queue_key(entry.key)
        except ValueError:
            continue  # a stray object beside the queues' folders
        name = _queue_name(segment)
        row = found.setdefault(name, QueueRow(name, 0, None))
        try:
            parsed = mailbox.layout.parse_manifest(entry.key)
        except ValueError:
            continue  # the queue's marker
        row.pending += 1
        age = now - parsed.enqueued_ms / 1000
        row.oldest_age = max(row.oldest_age or 0.0, age)
    return sorted(found.values(), key=lambda r: r.queue)


def _queue_name(segment: str) -> str:
    """A queue's name from its key segment; the segment itself if hashed or malformed."""
    try:
        return decode_name(segment) or segment
    except ValueError:
        return segment


def _job_ids_since(mailbox: Mailbox, since: float) -> Iterator[tuple[str, set[str | None]]]:
    """(job id, kinds of its objects) for jobs created after ``since``: ids sort by time."""
    layout = mailbox.layout
    current: str | None = None
    kinds: set[str | None] = set()
    for entry in mailbox.store.list_all(layout.jobs, start_after=layout.jobs_since(since)):
        try:
            job_id, kind = layout.parse_job_key(entry.key)
        except ValueError:
            continue  # a stray object beside the jobs' folders
        if job_id != current:
            if current:
                yield current, kinds
            current, kinds = job_id, set()
        kinds.add(kind)
    if current:
        yield current, kinds


def jobs(mailbox: Mailbox, worker_keys: KeyRing, since_seconds: float) -> list[JobRow]:
    """Recent jobs (claimed, finished or revoked) and their states."""
    now = time.time()
    rows = []
    for job_id, kinds in _job_ids_since(mailbox, now - since_seconds):
        task = queue = worker = ""
        state = "claimed"
        try:
            signed = mailbox.read_claim(job_id, worker_keys) if "claim" in kinds else None
        except (VerificationError, ProtocolError, NotFound, StoreError):
            signed = None
        if signed:
            worker, queue = signed.model.worker, signed.model.queue
            task = _task_of(signed.model.manifest)
        if "revocation" in kinds:
            state = "revoked"
        if signed and "result" in kinds:
            try:
                state = mailbox.read_result(job_id, signed.kid, worker_keys).model.state.value
            except (VerificationError, ProtocolError, NotFound) as exc:
                state = f"result unverified: {exc}"
        rows.append(JobRow(job_id, task, queue, state, worker, now - id_time(job_id)))
    return rows


def _task_of(manifest_token: str) -> str:
    import json

    from edge_mailbox.signer.keys import b64url_decode

    try:
        ti = json.loads(b64url_decode(manifest_token.split(".")[1]))["body"]["ti"]
    except (ValueError, KeyError, IndexError):
        return "?"
    return f"{ti.get('dag_id')}.{ti.get('task_id')} try {ti.get('try_number')}"


def sweep(mailbox: Mailbox, older_than: float, *, dry_run: bool = False) -> int:
    """Delete the folders of finished or revoked jobs created more than ``older_than``
    seconds ago: what the reconciler could not clean (it was down, or restarted)."""
    cutoff = time.time() - older_than
    doomed: list[str] = []
    folder: list[str] = []
    current = None
    done = False
    for entry in mailbox.store.list_all(mailbox.layout.jobs):
        try:
            job_id, kind = mailbox.layout.parse_job_key(entry.key)
        except ValueError:
            continue  # a stray object beside the jobs' folders: not a job's to sweep
        if id_time(job_id) >= cutoff:
            break
        if job_id != current:
            if done:
                doomed += folder
            current, folder, done = job_id, [], False
        folder.append(entry.key)
        done |= kind in ("result", "revocation")
    if done:
        doomed += folder
    if not dry_run and doomed:
        mailbox.store.delete_many(doomed)
    return len(doomed)


def as_dicts(rows: list) -> list[dict]:
    return [asdict(r) for r in rows]
