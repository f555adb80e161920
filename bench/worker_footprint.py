"""An idle worker's footprint and cost: requests per hour (and their price at AWS S3 Standard
list prices), memory, CPU; and the same for a busy worker per trivial task, from the numbers
e2e_bench.py leaves behind.

    .venv/bin/python bench/worker_footprint.py [--idle-seconds 120]

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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-mailbox-footprint-") as tmp:
        stats = Path(tmp) / "stats"
        stats.mkdir()
        stack = Stack(root=Path(tmp) / "stack")
        try:
            stack.prepare()
            worker = stack.add_worker("idle-1", EDGE_MAILBOX_WORKER_STATS_DIR=str(stats))
            proc = psutil.Process(worker.pid)
            status_file = stack.worker_home("idle-1") / "edge-mailbox-worker"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not list(status_file.glob("*/status.json")):
                time.sleep(0.5)  # the worker writes its status once started (imports done)
            time.sleep(2 * 5)  # let its poll back off to the idle rate (5 s) first
            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.monotonic()
            rss = []
            while time.monotonic() - t0 < args.idle_seconds:
                rss.append(proc.memory_info().rss)
                time.sleep(1)
            elapsed = time.monotonic() - t0
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            os.kill(worker.pid, signal.SIGTERM)
            worker.wait(60)
        finally:
            stack.stop()
        counts = json.loads((stats / "worker-idle-1.json").read_text())
    total_seconds = counts["seconds"]
    per_hour = {k: v * 3600 / total_seconds for k, v in counts["requests"].items()}
    print(
        f"idle worker over {elapsed:.0f} s (requests over its whole life of {total_seconds:.0f} s):"
    )
    print(
        "  requests per idle worker-hour: "
        + ", ".join(f"{k} {v:.0f}" for k, v in per_hour.items() if v)
    )
    print(
        f"  total {sum(per_hour.values()):.0f}/h, ${price_usd(per_hour):.5f}/h, "
        f"${price_usd(per_hour) * 24 * 30:.3f} per worker-month at S3 Standard list prices"
    )
    mib, percent = max(rss) / 2**20, 100 * cpu / elapsed
    print(f"  memory (RSS): {mib:.0f} MiB max, CPU: {percent:.2f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
