"""What a worker says about itself every heartbeat: state, slots, jobs, and system metrics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from edge_mailbox import __version__
from edge_mailbox.mailbox.models import Heartbeat, WorkerState


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
    queues: tuple[str, ...],
    concurrency: int,
    free_slots: int,
    running_jobs: list[str],
    comment: str,
    disk_path: Path,
) -> Heartbeat:
    return Heartbeat(
        worker=name,
        state=state,
        queues=list(queues),
        concurrency=concurrency,
        free_slots=max(free_slots, 0),
        running_jobs=running_jobs,
        version=__version__,
        maintenance_comment=comment,
        metrics=system_metrics(disk_path),
        sent_at=time.time(),
    )
