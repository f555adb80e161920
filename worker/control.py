"""The worker's run folder: how ``edge-mailbox-worker stop|maintenance|status`` reach a
running worker on the same host without any network: a pid file for signals, a control file
the worker reads each loop, and a status file it keeps current.

    {run_dir}/worker.pid     the running worker's pid
    {run_dir}/status.json    state, queues, slots, running jobs, maintenance comment
    {run_dir}/control.json   {"maintenance": bool, "comment": str}, written by the CLI
    {run_dir}/command.json   {"seq": int}: the newest scheduler-side command applied, so an
                             old one put back into the bucket is refused after a restart
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from edge_mailbox.mailbox.layout import encode_name


def default_run_dir(name: str) -> Path:
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    return home / "edge-mailbox-worker" / encode_name(name, kind="worker")


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid_file = path / "worker.pid"
        self.status_file = path / "status.json"
        self.control_file = path / "control.json"
        self.command_file = path / "command.json"
        self._control_mtime: float | None = None

    # -- the worker's side -------------------------------------------------------------------

    def claim_pid(self) -> None:
        """Record our pid; refuse if another live worker holds this run folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        other = self.running_pid()
        if other and other != os.getpid():
            raise SystemExit(
                f"edge-mailbox-worker: another worker (pid {other}) uses {self.path}; "
                "give this one another --name"
            )
        self.pid_file.write_text(str(os.getpid()))

    def release(self) -> None:
        if self.running_pid() == os.getpid():
            self.pid_file.unlink(missing_ok=True)

    def write_status(self, status: dict[str, Any]) -> None:
        _write_atomic(self.status_file, status)

    def command_seq(self) -> int:
        try:
            seq = json.loads(self.command_file.read_text()).get("seq", 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return seq if isinstance(seq, int) and seq >= 0 else 0

    def save_command_seq(self, seq: int) -> None:
        _write_atomic(self.command_file, {"seq": seq})

    def control_changed(self) -> dict[str, Any] | None:
        """The control file's content when it changed since the last call (one stat a loop)."""
        try:
            mtime = self.control_file.stat().st_mtime
        except FileNotFoundError:
            return None
        if mtime == self._control_mtime:
            return None
        self._control_mtime = mtime
        try:
            data = json.loads(self.control_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- the CLI's side ----------------------------------------------------------------------

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def read_status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def request_stop(self) -> int | None:
        pid = self.running_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
        return pid

    def set_maintenance(self, on: bool, comment: str = "") -> None:
        _write_atomic(self.control_file, {"maintenance": on, "comment": comment})
