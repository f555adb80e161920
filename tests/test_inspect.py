"""``airflow edge-mailbox inspect``: each object decoded with who signed it and whether it
verifies as its reader would verify it; sealed parts only by size; a job's whole story.
(The in-memory store: what is checked is the decoding, not the store.)"""

from __future__ import annotations

import time

from edge_mailbox.executor.inspect import Inspector
from edge_mailbox.mailbox.layout import TaskCoordinates, new_id
from edge_mailbox.mailbox.models import (
    Claim,
    Heartbeat,
    JobResult,
    RelayRequest,
    RelayResponse,
    WorkerCommand,
    WorkerState,
)
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.signer import KeyRing, SealKey, SigningKey
from tests.test_worker_claim_order import SCHEDULER, manifest

WORKER = SigningKey.generate()
STRANGER = SigningKey.generate()


def inspector(mailbox: Mailbox) -> Inspector:
    return Inspector(mailbox, KeyRing([SCHEDULER.public]), KeyRing([WORKER.public]))


def a_job(mailbox: Mailbox) -> tuple[str, str]:
    """A job with a manifest, claim, request, response, result and a log chunk."""
    job = manifest("q", 1, time.time()).model_copy(
        update={"ti": {"id": "x", "dag_id": "d", "run_id": "r", "task_id": "t", "try_number": 1}}
    )
    key = mailbox.put_manifest(job, SCHEDULER, ttl=600)
    raw = mailbox.store.get(key).body
    claim = Claim(
        job_id=job.job_id,
        queue="q",
        worker="w1",
        seal_key=SealKey.generate().public,
        claimed_at=time.time(),
        nonce=nonce(),
        worker_version="0.1.0",
        manifest=raw.decode(),
    )
    mailbox.create_claim(claim, WORKER)
    request_id = new_id()
    mailbox.put_request(
        RelayRequest(
            job_id=job.job_id, request_id=request_id, sent_at=time.time(), sealed="S" * 80
        ),
        WORKER,
    )
    mailbox.put_response(
        RelayResponse(
            job_id=job.job_id, request_id=request_id, answered_at=time.time(), sealed="A" * 90
        ),
        SCHEDULER,
    )
    now = time.time()
    mailbox.put_result(
        JobResult(job_id=job.job_id, worker="w1", state="success", started_at=now, finished_at=now),
        WORKER,
    )
    ti = TaskCoordinates.of_ti(job.ti)
    body = mailbox.encode_log_chunk(ti, job.job_id, 0, b"hello\n", job.seal_key, WORKER)
    mailbox.put_log_chunk(ti, job.job_id, 0, body)
    return job.job_id, key


def test_each_object_is_decoded_and_verified_as_its_reader_would(mem_store) -> None:
    mailbox = Mailbox(mem_store)
    job_id, manifest_key = a_job(mailbox)
    inspect = inspector(mailbox)

    report = inspect.inspect(manifest_key)
    assert report.kind == "job manifest" and report.verdict == "verified"
    assert "the scheduler side" in report.signed_by
    assert len(report.details["body"]["seal_key"]) == 43  # a public key: shown

    claim = inspect.inspect(f"s3://{mailbox.bucket}/{mailbox.layout.claim(job_id)}")
    assert claim.kind == "job object" and claim.verdict == "verified"
    assert "a trusted worker key" in claim.signed_by
    assert "the signed manifest" in claim.details["body"]["manifest"]

    text = "\n".join(claim.lines())
    assert "w1" in text and "sealed" not in text.replace("characters sealed", "")

    # One byte of the manifest changed: refused, with the reason.
    raw = bytearray(mem_store.get(manifest_key).body)
    raw[-5] = ord("A") if raw[-5] != ord("A") else ord("B")
    mem_store.put(manifest_key, bytes(raw))
    assert inspect.inspect(manifest_key).verdict.startswith("refused: ")

    # A heartbeat of an unknown key, and a command not signed by the scheduler side.
    hb = Heartbeat(
        worker="w2", state=WorkerState.IDLE, queues=["q"], concurrency=1, free_slots=1,
        version="0.1.0", sent_at=time.time(),
    )  # fmt: skip
    mailbox.put_heartbeat(hb, STRANGER, ttl=60)
    report = inspect.inspect(mailbox.layout.heartbeat("w2"))
    assert report.kind == "heartbeat" and "unknown key" in report.signed_by
    assert "refused" in report.verdict
    command = WorkerCommand(
        worker="w2", seq=1, queues=["q"], concurrency=1, issued_by="x", issued_at=time.time()
    )
    mailbox.put_command(command, STRANGER)
    report = inspect.inspect(mailbox.layout.command("w2"))
    assert report.kind == "worker command" and report.verdict.startswith("refused")

    marker = inspect.inspect(mailbox.layout.queues_marker)
    assert marker.kind.startswith("change marker") and marker.verdict == "verified"
    assert inspect.inspect(f"{mailbox.layout.root}elsewhere").kind == "not a mailbox object"


def test_a_jobs_story_shows_every_object_in_order(mem_store) -> None:
    mailbox = Mailbox(mem_store)
    job_id, _ = a_job(mailbox)
    story = list(inspector(mailbox).job_story(job_id))
    kinds = [r.kind for r in story]
    assert kinds[0] == "job manifest" and story[0].verdict.startswith("verified")
    assert {"job object", "inbox item", "log chunk"} <= set(kinds)
    chunk = next(r for r in story if r.kind == "log chunk")
    assert chunk.verdict == "verified, signed by the claim holder"
    request = next(r for r in story if r.key.endswith(".jws") and "/request-" in r.key)
    assert (
        request.verdict == "verified" and "characters sealed" in request.details["body"]["sealed"]
    )
    assert all(r.verdict.startswith("verified") or r.verdict == "" for r in story), [
        (r.key, r.verdict) for r in story
    ]
