"""How long the dashboard's workers endpoint takes, and the bucket requests it costs, with
1,000 workers: 1,000 signed heartbeats and one reconciler's signed snapshot of them in a
SeaweedFS on loopback.

    .venv/bin/python bench/fleet_endpoint.py [--workers 1000] [--rounds 20] [--out FILE]

The plugin's own FastAPI app, called in process (no HTTP socket; Airflow's auth check is
replaced by a fixed user: it reads no bucket). "cold": each call reads and verifies the
snapshot again (a new snapshot every call, as when a reconciler has just rewritten it);
"warm": the snapshot's ETag is unchanged, so only the LISTs are made. Prints a table and
writes the numbers as JSON; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fastapi.testclient import TestClient  # noqa: E402
from fleetkit import heartbeat, snapshot  # noqa: E402

from edge_mailbox.executor.plugins import api as fleet_api  # noqa: E402
from edge_mailbox.executor.plugins.auth import reader  # noqa: E402
from edge_mailbox.mailbox.config import StoreConfig  # noqa: E402
from edge_mailbox.mailbox.models import WorkerState  # noqa: E402
from edge_mailbox.mailbox.protocol import Mailbox  # noqa: E402
from edge_mailbox.mailbox.store import ObjectStore  # noqa: E402
from edge_mailbox.signer import SigningKey  # noqa: E402
from infra.devstore import DevStore  # noqa: E402

HEARTBEAT_TTL = 600.0


class BenchUser:
    def get_name(self) -> str:
        return "bench"


def timed(client: TestClient, mailbox: Mailbox, path: str) -> tuple[float, dict[str, int], int]:
    before = mailbox.store.counter.snapshot()
    start = time.perf_counter()
    answer = client.get(path)
    elapsed = time.perf_counter() - start
    answer.raise_for_status()
    after = mailbox.store.counter.snapshot()
    return (
        elapsed,
        {k: after[k] - before[k] for k in after if after[k] - before[k]},
        len(answer.content),
    )


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "min_ms": 1000 * ordered[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=ROOT / ".demo" / "bench" / "fleet_endpoint.json"
    )
    args = parser.parse_args()
    scheduler, worker_key = SigningKey.generate(), SigningKey.generate()
    with (
        tempfile.TemporaryDirectory(prefix="edge-mailbox-fleet-bench-") as tmp,
        DevStore(bucket="bench", data_dir=Path(tmp)) as dev,
    ):
        config = StoreConfig(
            bucket="bench",
            prefix="fleet-bench",
            endpoint_url=dev.endpoint_url,
            region="us-east-1",
            access_key_id=dev.access_key,
            secret_access_key=dev.secret_key,
            addressing_style="path",
        )
        writer = Mailbox(ObjectStore(config))
        start = time.perf_counter()
        beats = []
        for i in range(args.workers):
            hb = heartbeat(f"edge-{i:05d}", state=WorkerState.RUNNING, free_slots=2)
            writer.put_heartbeat(hb, worker_key, HEARTBEAT_TTL)
            beats.append((hb, worker_key))
        setup = time.perf_counter() - start
        snap = snapshot(writer, scheduler, "scheduler-1", workers=beats)
        snapshot_bytes = len(writer.store.get(writer.layout.fleet_snapshot(snap.owner)).body)

        scheduler.write(Path(tmp) / "keys" / "scheduler.pem")
        worker_key.write(Path(tmp) / "keys" / "workers" / "w.pem")
        os.environ.update(
            {
                f"AIRFLOW__EDGE_MAILBOX__{name.upper()}": value
                for name, value in {
                    "bucket": "bench",
                    "prefix": config.prefix,
                    "endpoint_url": dev.endpoint_url,
                    "region": "us-east-1",
                    "addressing_style": "path",
                    "aws_access_key_id": dev.access_key,
                    "aws_secret_access_key": dev.secret_key,
                    "signing_key_path": str(Path(tmp) / "keys" / "scheduler.pem"),
                    "worker_public_keys": str(Path(tmp) / "keys" / "workers"),
                }.items()
            }
        )
        app = fleet_api.create_fleet_app()
        app.dependency_overrides[reader] = BenchUser
        mailbox = fleet_api.HOLDER.get().mailbox  # as the first request makes it
        results: dict[str, dict] = {}
        with TestClient(app) as client:
            for label, path, rewrite in [
                ("workers, cold", "/api/workers", True),
                ("workers, warm", "/api/workers", False),
                ("workers ?search=edge-00042", "/api/workers?search=edge-00042", False),
                ("fleet (all tables), warm", "/api/fleet", False),
            ]:
                times, requests, size = [], {}, 0
                for _ in range(args.rounds):
                    if rewrite:  # a reconciler wrote a new snapshot: read and verify it again
                        snapshot(writer, scheduler, "scheduler-1", workers=beats)
                    elapsed, requests, size = timed(client, mailbox, path)
                    times.append(elapsed)
                results[label] = {**summary(times), "requests": requests, "answer_bytes": size}
    print(
        f"{args.workers} workers, SeaweedFS on loopback, {args.rounds} rounds; snapshot "
        f"{snapshot_bytes / 1024:.0f} KiB signed; heartbeats written in {setup:.1f} s"
    )
    print(f"  {'endpoint':<30}{'median ms':>10}{'p95 ms':>9}{'answer KiB':>12}  requests")
    for label, r in results.items():
        reqs = ", ".join(f"{n} {k}" for k, n in sorted(r["requests"].items()))
        print(
            f"  {label:<30}{r['median_ms']:>10.0f}{r['p95_ms']:>9.0f}"
            f"{r['answer_bytes'] / 1024:>12.0f}  {reqs}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "workers": args.workers,
                "rounds": args.rounds,
                "snapshot_bytes": snapshot_bytes,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
