"""The first task end to end: real SeaweedFS, real Airflow 3.3 (api-server, scheduler,
dag-processor), real worker processes with no route to Airflow."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from leakscan import LeakScanner, leaks_in

from demo.stack import Stack
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import JobManifest
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import SealKey, SigningKey

pytestmark = pytest.mark.e2e
DAG_ID = "edge_demo"
XCOM_VALUE = b"edge-xcom-value-7f3a"  # returned by produce() in demo/dags/edge_demo.py


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("e2e") / "stack", prefix=f"e2e-{secrets.token_hex(4)}"
    )
    stack.prepare(store=seaweed)
    stack.add_worker("edge-1", queues="default", concurrency=4)
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def test_leak_scanner_finds_what_it_must(seaweed, weed_store) -> None:
    """The scanner below would see a secret in clear, in a JWS payload, or a token."""
    secret = b"pw-" + secrets.token_hex(8).encode()
    key = SigningKey.generate()
    from edge_mailbox.signer import sign

    assert leaks_in(b"xx" + secret + b"yy", [secret])
    assert leaks_in(sign(b'{"password":"' + secret + b'"}', key).encode(), [secret])
    nested = sign(json.dumps({"m": sign(b'{"v":"' + secret + b'"}', key)}).encode(), key)
    assert leaks_in(nested.encode(), [secret])
    import jwt

    airflow_token = jwt.encode({"sub": "x", "scope": "execution"}, "k" * 64, algorithm="HS512")
    assert leaks_in(f"Bearer {airflow_token}".encode(), [])
    assert not leaks_in(b"nothing to see", [secret])


def test_first_task_end_to_end(stack: Stack) -> None:
    password = f"conn-pw-{secrets.token_hex(8)}"
    stack.add_connection("edge_demo_db", conn_type="postgres", login="plant", password=password)
    client = stack.bucket_client()
    scanner = LeakScanner(client, f"{stack.prefix}/", [password.encode(), XCOM_VALUE]).start()
    try:
        stack.wait_for_dag(DAG_ID)
        run_id = stack.trigger(DAG_ID)
        state = stack.wait_for_run(DAG_ID, run_id, timeout=240)
        stack.wait_for(lambda: stack.all_results_in(client), 60, "results in the bucket")
    finally:
        scanner.stop()
    assert state == "success", stack.log_tail("worker-edge-1")

    tis = stack.task_instances(DAG_ID, run_id)
    assert {ti["task_id"]: ti["state"] for ti in tis} == {
        "hello_bash": "success",
        "produce": "success",
        "consume": "success",
        "read_connection": "success",
    }
    assert all(ti["try_number"] == 1 for ti in tis)
    # The XCom value crossed tasks, and the task saw the connection's real password.
    assert stack.xcom(DAG_ID, run_id, "consume") == "got edge-xcom-value-7f3a"
    assert (
        stack.xcom(DAG_ID, run_id, "read_connection")
        == f"password length {len(password)}, login plant"
    )

    # Each task ran exactly once: one claim per task instance in the bucket, one start on the
    # worker.
    claimed = Counter(c["manifest"]["ti"]["task_id"] for c in stack.claims(client))
    assert claimed == {"hello_bash": 1, "produce": 1, "consume": 1, "read_connection": 1}
    worker_log = stack.log_tail("worker-edge-1", 10_000)
    assert len(re.findall(r"claimed job \w+ \(edge_demo\.", worker_log)) == 4

    # Nothing readable in any object, at any time of the run: no password, no XCom, no token.
    assert len(scanner.scanned) > 20
    assert scanner.leaks == []


def test_manifest_signed_by_another_key_is_never_claimed(stack: Stack) -> None:
    mailbox = Mailbox(stack.bucket_client())
    stranger = SigningKey.generate()
    job_id = new_id()
    forged = JobManifest(
        job_id=job_id,
        queue="default",
        enqueued_at=time.time(),
        ti={
            "id": "01a20147-3ff0-76e2-ac44-bf7425a784de",
            "dag_id": DAG_ID,
            "task_id": "hello_bash",
            "run_id": "forged",
            "try_number": 1,
            "map_index": -1,
            "pool_slots": 1,
            "priority_weight": 1,
            "dag_version_id": "01a20147-3ff0-76e2-ac44-bf7425a784de",
            "queue": "default",
        },
        dag_rel_path="edge_demo.py",
        bundle_info={"name": "dags-folder", "version": None},
        pool_slots=1,
        priority=10**6,  # first in line
        seal_key=SealKey.generate().public,
        scheduler_version="0.1.0",
    )
    key = mailbox.put_manifest(forged, stranger, ttl=600)
    mailbox.bump_marker("default")
    log_path = Path(stack.log_files["worker-edge-1"])
    stack.wait_for(
        lambda: f"refusing manifest {key}: unknown key id" in log_path.read_text(),
        60,
        "the refusal",
    )
    with pytest.raises(Exception, match="no such key"):
        mailbox.store.get(mailbox.layout.claim(job_id))
    assert f"claimed job {job_id}" not in log_path.read_text()
