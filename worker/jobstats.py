"""What finished jobs tell about the relay: each job writes its statistics (round trips,
requests, CPU) as it ends; the worker learns from them how long relay answers take (the next
jobs poll for theirs at about that time), and benchmarks keep them
(``EDGE_MAILBOX_WORKER_STATS_DIR``)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections import deque
from pathlib import Path

DEFAULT_RELAY_WAIT = 0.1


class JobStats:
    def __init__(self) -> None:
        kept = os.environ.get("EDGE_MAILBOX_WORKER_STATS_DIR")
        self.keep = bool(kept)
        self.folder = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="edge-mailbox-worker-"))
        self.relay_waits: deque[float] = deque(maxlen=16)  # the last few jobs': load changes

    def path_for(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def typical_relay_wait(self) -> float:
        """The median of recent relay answer waits (as the jobs estimated them): a new job
        polls for its first answer a little before that."""
        return statistics.median(self.relay_waits) if self.relay_waits else DEFAULT_RELAY_WAIT

    def absorb(self, path: Path) -> None:
        """Learn from a finished job's statistics, then drop them unless a benchmark keeps
        them."""
        try:
            stats = json.loads(path.read_text())
            self.relay_waits.extend(float(w) for w in stats.get("answer_waits", []))
        except (OSError, ValueError, TypeError, AttributeError):
            return  # a killed job writes none; the estimate just stays as it was
        finally:
            if not self.keep:
                path.unlink(missing_ok=True)

    def close(self, worker: str, totals: dict[str, object]) -> None:
        """The worker's own totals, for a benchmark; the folder goes unless it is kept."""
        if self.keep:
            (self.folder / f"worker-{worker}.json").write_text(json.dumps(totals))
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
