"""The bucket goes away for 30 s in the middle of a 60 s task: the task keeps running, what
the worker had to say waits, and it all arrives when the bucket is back; nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from demo.stack import Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_worker"
OUTAGE_SECONDS = 30


def test_store_outage_during_a_task(tmp_path) -> None:
    stack = Stack(
        root=tmp_path / "stack",
        dags_folder=DAGS,
        scheduler_options={"worker_timeout": 20, "worker_check_interval": 2},
    )
    try:
        stack.prepare()  # a SeaweedFS of its own: this test stops it
        assert stack.store
        worker = stack.add_worker(
            "outage-1", queues="outage", options={"worker_heartbeat_interval": 2}
        )
        stack.start_airflow()
        stack.wait_for_dag("outage_nap")
        run_id = stack.trigger("outage_nap")

        def nap_running() -> bool:
            tis = stack.task_instances("outage_nap", run_id)
            return bool(tis) and tis[0]["state"] == "running"

        stack.wait_for(nap_running, 120, "the task to run", every=0.2)
        stack.store.pause()  # SIGSTOP: connections hang, as behind a dead link
        try:
            outage_ends = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < outage_ends:  # the worker rides it out, it never crashes
                assert worker.poll() is None, stack.log_tail("worker-outage-1")
                time.sleep(1)
        finally:
            stack.store.resume()
        resumed = time.time()
        client = stack.bucket_client()
        heartbeat = f"{stack.prefix}/v1/workers/outage-1.jws"
        stack.wait_for(
            lambda: client.head(heartbeat).last_modified.timestamp() >= resumed - 1,
            60,
            "the worker's heartbeats to resume",
        )
        assert stack.wait_for_run("outage_nap", run_id, timeout=240) == "success"
        (ti,) = stack.task_instances("outage_nap", run_id)
        assert ti["try_number"] == 1  # not failed and retried: the same try went through

        wanted = [f"nap line {i}" for i in range(60)]

        def complete_log() -> list[str] | None:
            lines = [
                e.get("event", "")
                for e in stack.task_log("outage_nap", run_id, "nap")
                if isinstance(e, dict)
            ]
            return lines if wanted[-1] in lines else None

        lines = stack.wait_for(complete_log, 120, "the whole log")
        assert [line for line in lines if line.startswith("nap line ")] == wanted
        assert worker.poll() is None  # still serving
        assert "failing job" not in stack.log_tail("scheduler", 100000)
    finally:
        stack.stop()
