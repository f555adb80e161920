"""``make demo``: SeaweedFS, Airflow (api-server, scheduler, dag-processor) with MailboxExecutor,
one edge worker that reaches only the bucket, the example DAG, and what came of it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.stack import ROOT, Stack

DAG_ID = "edge_demo"


def main() -> int:
    stack = Stack(root=ROOT / ".demo")
    started = time.monotonic()
    try:
        print("1/6 starting SeaweedFS on 127.0.0.1 and preparing Airflow (SQLite) ...", flush=True)
        stack.prepare()
        assert stack.store
        print(f"    bucket {stack.store.bucket} at {stack.store.endpoint_url}", flush=True)
        print("2/6 starting one edge worker (no route to Airflow: only the bucket) ...", flush=True)
        stack.add_worker("edge-1", queues="default", concurrency=4)
        print(f"3/6 starting api-server on {stack.api}, scheduler, dag-processor ...", flush=True)
        stack.start_airflow()
        stack.add_connection(
            "edge_demo_db", conn_type="postgres", login="plant", password="demo-secret-pw"
        )
        stack.wait_for_dag(DAG_ID)
        print("4/6 triggering the example DAG ...", flush=True)
        run_id = stack.trigger(DAG_ID)
        state = stack.wait_for_run(DAG_ID, run_id, timeout=300)
        print(f"5/6 run {run_id}: {state.upper()}")
        for ti in sorted(stack.task_instances(DAG_ID, run_id), key=lambda t: t["task_id"]):
            print(f"    {ti['task_id']:<16} {ti['state']:<8} try {ti['try_number']}")
        print(f"    consume returned: {stack.xcom(DAG_ID, run_id, 'consume')!r}")
        print(f"    read_connection returned: {stack.xcom(DAG_ID, run_id, 'read_connection')!r}")
        # The run is SUCCESS once the last task reports its state; its worker then uploads the
        # log and the result: wait for those too, so that the listing is complete.
        client = stack.bucket_client()
        stack.wait_for(lambda: stack.all_results_in(client), 60, "job results in the bucket")
        print("6/6 the bucket (aws s3 ls --recursive, as an operator would see it):")
        for entry in client.list_all(""):
            print(f"    {entry.last_modified:%Y-%m-%d %H:%M:%S} {entry.size:>8} {entry.key}")
        print(f"done in {time.monotonic() - started:.0f} s; logs in {stack.root / 'logs'}")
        return 0 if state == "success" else 1
    except Exception as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for name in ("scheduler", "worker-edge-1", "api-server"):
            print(f"--- {name} (last lines) ---\n{stack.log_tail(name)}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
