"""Executor callbacks (a missed deadline's SyncCallback) run on an edge worker, through the
bucket, as Airflow's Edge Executor runs them since 3.8."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from demo.stack import Stack

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
        kinds = ["callback" if c["manifest"].get("callback") else "task" for c in stack.claims()]
        assert sorted(kinds) == ["callback", "task"]
    finally:
        stack.stop(keep_store=True)
