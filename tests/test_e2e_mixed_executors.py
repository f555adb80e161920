"""MailboxExecutor beside LocalExecutor: a task that asks for MailboxExecutor runs at the edge,
the others stay on the scheduler host."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from demo.stack import MAILBOX_EXECUTOR, Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags"


def test_tasks_choose_their_executor(seaweed, tmp_path) -> None:
    stack = Stack(
        root=tmp_path / "stack",
        executor=f"LocalExecutor,{MAILBOX_EXECUTOR}",
        dags_folder=DAGS,
        prefix=f"mixed-{secrets.token_hex(4)}",
    )
    try:
        stack.prepare(store=seaweed)
        stack.add_worker("edge-1")
        stack.start_airflow()
        stack.wait_for_dag("mixed_executors")
        run_id = stack.trigger("mixed_executors")
        state = stack.wait_for_run("mixed_executors", run_id, timeout=240)
        assert state == "success", stack.log_tail("scheduler")
        assert stack.xcom("mixed_executors", run_id, "at_the_edge") == "local then edge"
        client = stack.bucket_client()
        stack.wait_for(lambda: stack.all_results_in(client), 60, "results in the bucket")
        claimed = [c["manifest"]["ti"]["task_id"] for c in stack.claims(client)]
        assert claimed == ["at_the_edge"]  # the other task never went through the bucket
    finally:
        stack.stop(keep_store=True)
