"""Executor callbacks (a missed deadline's SyncCallback) run on an edge worker, through the
bucket, as Airflow's Edge Executor runs them since 3.8."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from demo.stack import Stack
from edge_mailbox.signer.keys import b64url_decode

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_callbacks"


def test_deadline_callback_runs_on_an_edge_worker(seaweed, tmp_path) -> None:
    stack = Stack(root=tmp_path / "stack", dags_folder=DAGS, prefix=f"cb-{secrets.token_hex(4)}")
    try:
        stack.prepare(store=seaweed)
        stack.add_worker("edge-1")
        stack.start_airflow()
        stack.wait_for_dag("missed_deadline")
        run_id = stack.trigger("missed_deadline")
        trace = stack.worker_home("edge-1") / "callbacks.jsonl"
        stack.wait_for(trace.exists, 120, "the callback to run on the worker")
        assert [json.loads(line)["tag"] for line in trace.read_text().splitlines()] == [
            "deadline-missed"
        ]
        assert stack.wait_for_run("missed_deadline", run_id, timeout=120) == "success"
        client = stack.bucket_client()
        stack.wait_for(lambda: stack.all_results_in(client), 60, "results")
        kinds = []
        for entry in client.list_all(f"{stack.prefix}/v1/jobs/"):
            if entry.key.endswith("/claim.jws"):
                claim = json.loads(b64url_decode(client.get(entry.key).body.decode().split(".")[1]))
                manifest = json.loads(b64url_decode(claim["body"]["manifest"].split(".")[1]))
                kinds.append("callback" if manifest["body"].get("callback") else "task")
        assert sorted(kinds) == ["callback", "task"]
    finally:
        stack.stop(keep_store=True)
