"""What a fresh interpreter costs against a runner forked from the worker: N trivial tasks of
each kind on one worker (one slot, so each task starts alone), with real Airflow and
SeaweedFS. For each path: the wall time from a job's claim to its task's code running, the
CPU of the worker's whole process tree (worker, runners, tasks) per task, and the peak memory
of the runners and tasks (RSS, and PSS, which splits the pages a fork shares with the worker).

    .venv/bin/python bench/fresh_interpreter.py [--tasks 10] [--out .demo/fresh_interpreter.json]

Prints a table and writes JSON; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.stack import Stack  # noqa: E402

DAGS = Path(__file__).resolve().parent / "dags_fresh"
PATHS = {"forked": "bench_forked", "fresh": "bench_fresh"}
WORKER = "bench-fresh-1"


def tree_cpu(pid: int) -> float:
    """CPU-s so far of a process and all its descendants, reaped ones included."""
    root = psutil.Process(pid)
    own = root.cpu_times()
    total = own.user + own.system + own.children_user + own.children_system
    for proc in root.children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


class MemorySampler(threading.Thread):
    """Peak RSS and PSS (MiB) of the worker's descendants (its runners and their tasks),
    summed over the processes alive at each sample."""

    def __init__(self, worker: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.worker, self.every = psutil.Process(worker), every
        self.peak_rss = self.peak_pss = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            rss = pss = 0
            for proc in self.worker.children(recursive=True):
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss = rss + info.rss, pss + info.pss
            self.peak_rss = max(self.peak_rss, rss / 2**20)
            self.peak_pss = max(self.peak_pss, pss / 2**20)


def run_path(stack: Stack, dag_id: str, worker: int) -> dict[str, Any]:
    sampler = MemorySampler(worker)
    cpu_before = tree_cpu(worker)
    sampler.start()
    run_id = stack.trigger(dag_id)
    state = stack.wait_for_run(dag_id, run_id, timeout=1200)
    sampler.done.set()
    sampler.join()
    cpu = tree_cpu(worker) - cpu_before
    if state != "success":
        raise SystemExit(f"{dag_id} ended {state}: see {stack.root / 'logs'}")
    claimed = {
        c["manifest"]["ti"]["task_id"]: c["claimed_at"]
        for c in stack.claims()
        if c["manifest"]["ti"]["run_id"] == run_id
    }
    waits = sorted(
        float(stack.xcom(dag_id, run_id, task_id)) - claimed_at
        for task_id, claimed_at in claimed.items()
    )
    return {
        "tasks": len(waits),
        "claim_to_start_s": {
            "median": statistics.median(waits),
            "min": waits[0],
            "max": waits[-1],
        },
        "cpu_s_per_task": cpu / len(waits),
        "peak_rss_mib": sampler.peak_rss,
        "peak_pss_mib": sampler.peak_pss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10, help="trivial tasks per path")
    parser.add_argument("--out", type=Path, default=ROOT / ".demo" / "fresh_interpreter.json")
    args = parser.parse_args()
    os.environ["EDGE_FRESH_BENCH_TASKS"] = str(args.tasks)  # the DAG file reads it, both sides
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edge-mailbox-fresh-") as tmp:
        stack = Stack(root=Path(tmp) / "stack", dags_folder=DAGS)
        try:
            stack.prepare()
            worker = stack.add_worker(WORKER, concurrency=1).pid
            stack.start_airflow()
            for dag_id in PATHS.values():
                stack.wait_for_dag(dag_id)
            run_path(stack, PATHS["forked"], worker)  # warm-up: DAG files, caches, connections
            for path, dag_id in PATHS.items():
                results[path] = run_path(stack, dag_id, worker)
        finally:
            stack.stop()
    header = f"{'path':8} {'tasks':>5} {'claim->start median':>20} {'min':>6} {'max':>6}"
    print(f"{header} {'CPU-s/task':>10} {'peak RSS MiB':>12} {'peak PSS MiB':>12}")
    for path, r in results.items():
        wait = r["claim_to_start_s"]
        print(
            f"{path:8} {r['tasks']:5d} {wait['median']:19.2f}s {wait['min']:5.2f}s "
            f"{wait['max']:5.2f}s {r['cpu_s_per_task']:10.2f} {r['peak_rss_mib']:12.1f} "
            f"{r['peak_pss_mib']:12.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine_cpus": os.cpu_count(), **results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
