"""Executor callbacks (a missed deadline's SyncCallback) run on an edge worker, through the
bucket, as Airflow's Edge Executor runs them since 3.8."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from leakscan import LeakScanner

from demo.stack import Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_callbacks"
SECRET = "callback-secret-2f9c41d7e0"  # as in dags_callbacks/deadline_dag.py


def test_deadline_callback_runs_on_an_edge_worker(seaweed, tmp_path) -> None:
    stack = Stack(root=tmp_path / "stack", dags_folder=DAGS, prefix=f"cb-{secrets.token_hex(4)}")
    try:
        stack.prepare(store=seaweed)
        stack.add_worker("edge-1")
        stack.start_airflow()
        client = stack.bucket_client()
        scanner = LeakScanner(client, f"{stack.prefix}/", [SECRET.encode()]).start()
        stack.wait_for_dag("missed_deadline")
        run_id = stack.trigger("missed_deadline")
        trace = stack.worker_home("edge-1") / "callbacks.jsonl"
        try:
            stack.wait_for(trace.exists, 120, "the callback to run on the worker")
        finally:
            scanner.stop()
        calls = [json.loads(line) for line in trace.read_text().splitlines()]
        assert [(c["tag"], c["secret"]) for c in calls] == [("deadline-missed", SECRET)]
        assert scanner.leaks == []  # its kwargs crossed the bucket sealed
        assert stack.wait_for_run("missed_deadline", run_id, timeout=120) == "success"
        stack.wait_for(lambda: stack.all_results_in(client), 60, "results")
        kinds = ["callback" if c["manifest"].get("callback") else "task" for c in stack.claims()]
        assert sorted(kinds) == ["callback", "task"]
    finally:
        stack.stop(keep_store=True)
