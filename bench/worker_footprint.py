"""An idle worker's footprint and cost: requests per hour (and their price at AWS S3 Standard
list prices), memory, CPU. (A busy worker's requests and CPU per task: e2e_bench.py.)

    .venv/bin/python bench/worker_footprint.py [--idle-seconds 120] [--heartbeat 30]

The idle worker runs against SeaweedFS with no scheduler at all: what it spends is what an
edge site pays while nothing happens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.stack import Stack
from edge_mailbox.mailbox.accounting import price_usd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat interval (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-mailbox-footprint-") as tmp:
        stack = Stack(root=Path(tmp) / "stack")
        try:
            stack.prepare()
            worker = stack.add_worker(
                "idle-1", options={"worker_heartbeat_interval": args.heartbeat}
            )
            proc = psutil.Process(worker.pid)
            status_path = next(
                iter(
                    stack.wait_for(
                        lambda: list(
                            stack.worker_home("idle-1").glob("edge-mailbox-worker/*/status.json")
                        ),
                        120,
                        "the worker's status",
                    )
                )
            )

            def heartbeat_after(moment: float) -> dict:
                """The first status the worker writes with a heartbeat after ``moment``."""
                return stack.wait_for(
                    lambda: (lambda st: st if st.get("last_heartbeat", 0) > moment else None)(
                        json.loads(status_path.read_text())
                    ),
                    max(0.0, moment - time.time()) + 3 * args.heartbeat,
                    "a heartbeat",
                    every=0.2,
                )

            # Let the poll back off to its idle rate, then count between two heartbeats.
            first = heartbeat_after(time.time() + 3 * args.heartbeat)
            cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            rss = []
            while time.monotonic() - t0 < args.idle_seconds:
                rss.append(proc.memory_info().rss)
                time.sleep(1)
            last = heartbeat_after(time.time())
            elapsed = last["last_heartbeat"] - first["last_heartbeat"]
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            cpu_seconds = time.monotonic() - t0
            os.kill(worker.pid, signal.SIGTERM)
            worker.wait(60)
        finally:
            stack.stop()
    delta = {k: last["requests"][k] - first["requests"][k] for k in first["requests"]}
    per_hour = {k: v * 3600 / elapsed for k, v in delta.items()}
    print(f"idle worker, one queue, heartbeat every {args.heartbeat:.0f} s, over {elapsed:.0f} s:")
    print(
        "  requests per idle worker-hour: "
        + ", ".join(f"{k} {v:.0f}" for k, v in per_hour.items() if v)
    )
    print(
        f"  total {sum(per_hour.values()):.0f}/h, ${price_usd(per_hour):.5f}/h, "
        f"${price_usd(per_hour) * 24 * 30:.3f} per worker-month at S3 Standard list prices"
    )
    mib, percent = max(rss) / 2**20, 100 * cpu / cpu_seconds
    print(f"  memory (RSS): {mib:.1f} MiB max, CPU: {percent:.2f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
