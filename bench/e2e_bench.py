"""Wall time of a 10-task chain and a 20-task fan-out, MailboxExecutor vs LocalExecutor, on this
machine in one run (both stacks up, rounds interleaved); and the relay's round trip (median,
p95) as the tasks saw it.

    make bench        (or: .venv/bin/python bench/e2e_bench.py [--rounds N])

Numbers are printed side by side; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.stack import MAILBOX_EXECUTOR, Stack
from edge_mailbox.mailbox.accounting import price_usd

DAGS = Path(__file__).resolve().parent / "dags"


def _seconds(run: dict) -> float:
    start = datetime.fromisoformat(run["queued_at"])
    end = datetime.fromisoformat(run["end_date"])
    return (end - start).total_seconds()


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time so far of each component, split into the component's own process and the
    processes it runs tasks in (with reaped ones): for LocalExecutor those are the
    scheduler's worker processes, for MailboxExecutor the edge worker's job processes. That
    split is what compares the edge worker with Airflow's own workers."""
    import psutil

    totals: dict[str, float] = {}
    named = dict(stack.processes)
    if stack.store and stack.store.process:
        named["seaweedfs"] = stack.store.process
    for name, popen in named.items():
        name = name.split("-")[0] if name.startswith("worker") else name
        try:
            root = psutil.Process(popen.pid)
            own = root.cpu_times()
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        spawned = own.children_user + own.children_system
        for proc in children:
            try:
                t = proc.cpu_times()
                spawned += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        totals[name] = own.user + own.system
        if spawned or name in ("scheduler", "worker"):
            totals[f"{name} tasks"] = spawned
    return totals


DAG_IDS = ("bench_chain", "bench_fanout")
EXECUTORS = {"MailboxExecutor": MAILBOX_EXECUTOR, "LocalExecutor": "LocalExecutor"}


def start_stack(executor: str, workdir: Path, stats_dir: Path) -> Stack:
    stack = Stack(root=workdir / executor.rsplit(".", 1)[-1], executor=executor, dags_folder=DAGS)
    stack.prepare()
    if executor == MAILBOX_EXECUTOR:
        stack.add_worker("bench-1", concurrency=32, EDGE_MAILBOX_WORKER_STATS_DIR=str(stats_dir))
    stack.start_airflow()
    for dag_id in DAG_IDS:
        stack.wait_for_dag(dag_id)
    return stack


def run_round(
    stack: Stack, times: dict[str, list[float]], cpu: dict[str, dict[str, float]], rounds: int
) -> None:
    """Each DAG once; the fan-out's CPU per task, by component, added up over the rounds."""
    for dag_id in DAG_IDS:
        before = cpu_seconds(stack)
        run_id = stack.trigger(dag_id)
        state = stack.wait_for_run(dag_id, run_id, timeout=600)
        if state != "success":
            raise RuntimeError(f"{dag_id} {run_id}: {state}")
        run = stack._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        times[dag_id].append(_seconds(run))
        if dag_id == "bench_fanout":
            after = cpu_seconds(stack)
            for name, value in after.items():
                cpu.setdefault(name, {}).setdefault(stack.executor, 0.0)
                cpu[name][stack.executor] += (value - before.get(name, 0.0)) / (20 * rounds)
        print(
            f"  {stack.executor.rsplit('.', 1)[-1]:<16} {dag_id:<13} {times[dag_id][-1]:6.2f} s",
            flush=True,
        )


def measure(
    rounds: int, workdir: Path, stats_dir: Path, cpu: dict[str, dict[str, float]]
) -> dict[str, dict[str, list[float]]]:
    """Both stacks up at once, their rounds interleaved (and which goes first alternating), so
    that a slower or faster stretch of this shared machine weighs on both alike."""
    stacks: dict[str, Stack] = {}
    times = {name: {dag_id: [] for dag_id in DAG_IDS} for name in EXECUTORS}
    try:
        for name, executor in EXECUTORS.items():
            stacks[name] = start_stack(executor, workdir, stats_dir)
        for index in range(rounds):
            order = list(stacks) if index % 2 == 0 else list(reversed(stacks))
            for name in order:
                run_round(stacks[name], times[name], cpu, rounds)
        mailbox = stacks["MailboxExecutor"]
        client = mailbox.bucket_client()
        mailbox.wait_for(lambda: mailbox.all_results_in(client), 60, "the last results")
        PICKUPS.extend(pickup_latencies(mailbox))
    except Exception:  # the logs go with the temporary folder: show what failed first
        for stack in stacks.values():
            for name in stack.processes:
                print(f"--- {name} log, last lines:\n{stack.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        for stack in stacks.values():
            stack.stop()  # the executor and the worker write their request counts as they exit
    return times


PICKUPS: list[float] = []


def pickup_latencies(stack: Stack) -> list[float]:
    """Seconds from a manifest's enqueue to its claim, for every job in the bucket."""
    return [c["claimed_at"] - c["manifest"]["enqueued_at"] for c in stack.claims()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-mailbox-bench-") as tmp:
        workdir, stats_dir = Path(tmp), Path(tmp) / "stats"
        stats_dir.mkdir()
        os.environ["EDGE_MAILBOX_STATS_DIR"] = str(stats_dir)  # the scheduler's request count
        cpu: dict[str, dict[str, float]] = {}
        results = measure(args.rounds, workdir, stats_dir, cpu)
        round_trips: list[float] = []
        relay_requests: list[int] = []
        polls: list[float] = []
        job_cpu: dict[str, list[float]] = {}
        totals = {"executor": {}, "worker": {}, "jobs": {}}
        for path in stats_dir.glob("*.json"):
            stats = json.loads(path.read_text())
            part = (
                "executor"
                if path.name.startswith("executor")
                else "worker"
                if path.name.startswith("worker-")
                else "jobs"
            )
            for kind, n in stats["requests"].items():
                totals[part][kind] = totals[part].get(kind, 0) + n
            if part == "jobs":
                round_trips += stats["round_trips"]
                relay_requests.append(sum(stats["requests"].values()))
                polls.append(stats.get("polls", 0) / max(1, len(stats["round_trips"])))
                for part, times in stats.get("cpu", {}).items():
                    job_cpu.setdefault(part, []).append(times["user"] + times["system"])
    print("\nwall time from trigger (queued) to run success, median of rounds:")
    print(f"  {'DAG':<14}{'MailboxExecutor':>17}{'LocalExecutor':>15}")
    for dag_id in ("bench_chain", "bench_fanout"):
        mailbox = statistics.median(results["MailboxExecutor"][dag_id])
        local = statistics.median(results["LocalExecutor"][dag_id])
        print(f"  {dag_id:<14}{mailbox:>15.2f} s{local:>13.2f} s")
    print('\nCPU seconds per task during the fan-out, by process ("tasks": the processes that')
    print("ran the tasks; LocalExecutor's are the scheduler's workers, ours the worker's jobs):")
    print(f"  {'component':<14}{'MailboxExecutor':>17}{'LocalExecutor':>15}")
    for name in sorted(cpu):
        row = cpu[name]
        m, loc = row.get(MAILBOX_EXECUTOR), row.get("LocalExecutor")
        fm = f"{m:.3f} s" if m is not None else "-"
        fl = f"{loc:.3f} s" if loc is not None else "-"
        print(f"  {name:<14}{fm:>17}{fl:>15}")
    if round_trips:
        ms = sorted(t * 1000 for t in round_trips)
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        print(
            f"\nrelay round trip over {len(ms)} Execution API calls: "
            f"median {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms"
        )
        print(f"  answer polls per call: mean {statistics.mean(polls):.1f}")
        if job_cpu:
            print(
                "  CPU per job, median: "
                + ", ".join(f"{part} {statistics.median(v):.3f} s" for part, v in job_cpu.items())
                + " (supervisor: the job process with its relay)"
            )
        tasks = len(relay_requests)
        print(
            f"\nbucket requests per task over {tasks} tasks (the whole run, idle polls included):"
        )
        for part, label in (
            ("jobs", "task processes (relay)"),
            ("worker", "worker main loop"),
            ("executor", "scheduler side"),
        ):
            counts = {k: n / tasks for k, n in totals[part].items() if n}
            print(f"  {label:<24} " + ", ".join(f"{k} {v:.1f}" for k, v in counts.items()))
        every = {}
        for part in totals.values():
            for k, n in part.items():
                every[k] = every.get(k, 0) + n / tasks
        print(
            f"  {'all':<24} {sum(every.values()):.1f} requests, ${price_usd(every) * 1000:.4f} "
            "per 1,000 tasks at S3 Standard list prices"
        )
    if PICKUPS:
        ordered = sorted(PICKUPS)
        print(
            f"\npickup (enqueue to claim) over {len(ordered)} jobs: median "
            f"{statistics.median(ordered):.2f} s, p95 {ordered[int(len(ordered) * 0.95)]:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
