"""Signed heartbeats and fleet snapshots as workers and reconcilers write them, for the tests
of the fleet view and the dashboard's API (and the fleet benchmark)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import (
    FleetJob,
    FleetQueue,
    FleetSnapshot,
    FleetWorker,
    Heartbeat,
    WorkerState,
)
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import SigningKey

HEARTBEAT_TTL = 600.0


def heartbeat(name: str, **fields: Any) -> Heartbeat:
    now = time.time()
    values: dict[str, Any] = {
        "worker": name,
        "state": WorkerState.IDLE,
        "queues": ["default"],
        "concurrency": 4,
        "free_slots": 4,
        "running_jobs": [],
        "version": "0.1.0",
        "metrics": {"cpu_percent": 12.5, "memory_percent": 40.0, "disk_free_percent": 70.0},
        "sent_at": now,
        "started_at": now - 3600,
        "command_seq": 0,
        "requests": {"GET": 700, "PUT": 60, "LIST": 2},
    }
    values.update(fields)
    return Heartbeat(**values)


def beat(mailbox: Mailbox, key: SigningKey, name: str, **fields: Any) -> Heartbeat:
    """Write worker ``name``'s heartbeat, signed by its key, as its worker does."""
    hb = heartbeat(name, **fields)
    mailbox.put_heartbeat(hb, key, HEARTBEAT_TTL)
    return hb


def job(queue: str = "default", worker: str | None = None, **fields: Any) -> FleetJob:
    now = time.time()
    values: dict[str, Any] = {
        "job_id": new_id(),
        "queue": queue,
        "phase": "running" if worker else "queued",
        "ti": {
            "dag_id": "d",
            "run_id": "manual__1",
            "task_id": "t",
            "map_index": -1,
            "try_number": 1,
        },
        "worker": worker,
        "enqueued_at": now - 30,
        "claimed_at": now - 28 if worker else None,
    }
    values.update(fields)
    return FleetJob(**values)


def snapshot(
    mailbox: Mailbox,
    scheduler: SigningKey,
    owner: str,
    workers: Sequence[tuple[Heartbeat, SigningKey]] = (),
    jobs: Sequence[FleetJob] = (),
    queues: Sequence[FleetQueue] = (),
    written_at: float | None = None,
    requests: dict[str, int] | None = None,
) -> FleetSnapshot:
    """Write the reconciler ``owner``'s snapshot of the heartbeats it verified."""
    now = time.time() if written_at is None else written_at
    snap = FleetSnapshot(
        owner=owner,
        written_at=now,
        started_at=now - 7200,
        workers=[
            FleetWorker(heartbeat=hb, kid=key.kid, seen=hb.sent_at, alive=True)
            for hb, key in workers
        ],
        jobs=list(jobs),
        queues=list(queues),
        requests=requests if requests is not None else {"GET": 3600, "PUT": 720, "LIST": 240},
    )
    mailbox.put_fleet_snapshot(snap, scheduler)
    return snap
