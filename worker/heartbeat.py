"""What a worker says about itself every heartbeat: state, slots, jobs, and system metrics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from edge_mailbox import __version__
from edge_mailbox.mailbox.models import Heartbeat, WorkerState
from edge_mailbox.worker.orders import Orders


def system_metrics(disk_path: Path) -> dict[str, float]:
    """CPU and memory in percent, free disk where logs go, 1-minute load."""
    metrics = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "load_1m": os.getloadavg()[0],
        "cpu_count": float(psutil.cpu_count() or 1),
    }
    try:
        usage = psutil.disk_usage(str(disk_path if disk_path.exists() else Path("/")))
        metrics["disk_free_percent"] = 100.0 - usage.percent
    except OSError:
        pass
    return metrics


def build_heartbeat(
    name: str,
    state: WorkerState,
    orders: Orders,
    free_slots: int,
    running_jobs: list[str],
    refusal: str,
    disk_path: Path,
    requests: dict[str, int],
) -> Heartbeat:
    return Heartbeat(
        worker=name,
        state=state,
        queues=list(orders.queues),
        concurrency=orders.concurrency,
        free_slots=max(free_slots, 0),
        running_jobs=running_jobs,
        version=__version__,
        maintenance_comment=orders.comment or refusal,
        metrics=system_metrics(disk_path),
        sent_at=time.time(),
        started_at=orders.started_at,
        command_seq=orders.seq,
        maintenance_by=orders.maintenance_by,
        requests=requests,
    )
